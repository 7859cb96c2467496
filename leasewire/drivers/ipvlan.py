"""The ipvlan driver: the pod interface is an ipvlan link on a host master interface.

Every pod shares the master's MAC address, which suits networks that allow
one MAC per port, such as most clouds. The CNI result lists the pod interface
with the master's MAC; the master itself is not listed.

Network configuration keys read by this driver:

- ``master``: host interface to attach to (required).
- ``mode``: ``l2`` (default; the pod resolves neighbours itself), ``l3`` (the
  master's namespace routes the pod's packets; no ARP or NDP from the pod) or
  ``l3s`` (like l3, and the packets pass the master namespace's netfilter).

A requested MAC address is rejected, because the pod interface has to use the master's.
"""

from __future__ import annotations

from typing import ClassVar

from leasewire.drivers.base import AttachRequest, InvalidOptionError
from leasewire.drivers.netlink import Message, link_mac
from leasewire.drivers.sublink import SublinkDriver, SublinkOptions

# IPVLAN_MODE_* from linux/if_link.h.
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}


class IpvlanDriver(SublinkDriver):
    name: ClassVar[str] = "ipvlan"
    kind: ClassVar[str] = "ipvlan"
    modes: ClassVar[tuple[str, ...]] = tuple(IPVLAN_MODES)
    default_mode: ClassVar[str] = "l2"

    def link_spec(self, options: SublinkOptions, request: AttachRequest) -> dict[str, object]:
        if request.mac is not None:
            raise InvalidOptionError(
                "mac",
                request.mac,
                "an ipvlan interface always has its master's MAC address; "
                "drop the MAC request or use the macvlan driver",
            )
        return {"kind": "ipvlan", "ipvlan_mode": IPVLAN_MODES[options.mode]}

    def announces(self, options: SublinkOptions) -> bool:
        # In l3 and l3s mode the link has NOARP set and never talks ARP or NDP.
        return options.mode == "l2"

    def result_mac(self, pod_link: Message, master: Message) -> str:
        return link_mac(master)
