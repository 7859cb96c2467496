"""Options of the bridge driver and their validation. The driver module describes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from leasewire.drivers.base import InvalidOptionError, interface_name_problem
from leasewire.drivers.netlink import MAX_IFNAME_LENGTH

DEFAULT_BRIDGE = "lw0"
MIN_VLAN = 1
MAX_VLAN = 4094


@dataclass(frozen=True)
class BridgeOptions:
    bridge: str
    vlan: int | None = None
    hairpin: bool = False
    promiscuous: bool = False

    @property
    def gateway_link(self) -> str:
        """Name of the link that carries the gateway addresses."""
        if self.vlan is None:
            return self.bridge
        return vlan_link_name(self.bridge, self.vlan)


def vlan_link_name(bridge: str, vlan: int) -> str:
    suffix = f".{vlan}"
    return bridge[: MAX_IFNAME_LENGTH - len(suffix)] + suffix


def _flag(options: Mapping[str, object], key: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise InvalidOptionError(key, value, "expected true or false")
    return value


def parse_options(options: Mapping[str, object]) -> BridgeOptions:
    bridge = options.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str):
        raise InvalidOptionError("bridge", bridge, "expected an interface name string")
    problem = interface_name_problem(bridge)
    if problem:
        raise InvalidOptionError("bridge", bridge, f"not a valid interface name: {problem}")

    vlan = options.get("vlan")
    if vlan is not None and (
        isinstance(vlan, bool) or not isinstance(vlan, int) or not MIN_VLAN <= vlan <= MAX_VLAN
    ):
        raise InvalidOptionError("vlan", vlan, f"expected a VLAN id from {MIN_VLAN} to {MAX_VLAN}")
    return BridgeOptions(
        bridge=bridge,
        vlan=vlan,
        hairpin=_flag(options, "hairpinMode"),
        promiscuous=_flag(options, "promiscMode"),
    )
