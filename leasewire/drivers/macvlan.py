"""The macvlan driver: the pod interface is a macvlan link on a host master interface.

Each pod gets its own MAC address on the master's segment, so the fabric must
accept several MACs per port ("open L2"). The pod cannot reach the node
through the master itself: macvlan passes no traffic between a master and its
links.

Network configuration keys read by this driver:

- ``master``: host interface to attach to (required).
- ``mode``: ``bridge`` (default; pods on one master reach each other directly),
  ``private`` (pods on one master are isolated from each other), ``vepa``
  (traffic between pods goes through the external switch) or ``passthru``
  (one pod takes the master over, with the master's MAC).
"""

from __future__ import annotations

from typing import ClassVar

from leasewire.drivers.base import AttachRequest
from leasewire.drivers.sublink import SublinkDriver, SublinkOptions


class MacvlanDriver(SublinkDriver):
    name: ClassVar[str] = "macvlan"
    kind: ClassVar[str] = "macvlan"
    modes: ClassVar[tuple[str, ...]] = ("bridge", "private", "vepa", "passthru")
    default_mode: ClassVar[str] = "bridge"

    def link_spec(self, options: SublinkOptions, request: AttachRequest) -> dict[str, object]:
        spec: dict[str, object] = {"kind": "macvlan", "macvlan_mode": options.mode}
        if request.mac is not None:
            spec["address"] = request.mac
        return spec

    def announces(self, options: SublinkOptions) -> bool:
        return True
