"""The bridge VLAN entries of a port, as CHECK reads them back after attach set them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leasewire.drivers.base import CheckFailedError
from leasewire.drivers.netlink import Message, netlink_step

# From linux/if_bridge.h.
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


@dataclass(frozen=True, order=True)
class PortVlan:
    """One VLAN entry of a bridge port, as ``bridge vlan show`` lists it."""

    vid: int
    pvid: bool
    untagged: bool

    def describe(self) -> str:
        flags = [
            name for name, on in (("PVID", self.pvid), ("egress untagged", self.untagged)) if on
        ]
        return f"VLAN {self.vid} ({', '.join(flags) or 'tagged'})"


def describe_vlans(vlans: tuple[PortVlan, ...]) -> str:
    if not vlans:
        return "no VLAN"
    return ", ".join(vlan.describe() for vlan in vlans)


async def port_vlans(ipr: Any, index: int) -> tuple[PortVlan, ...]:
    """Read the VLAN entries of the bridge port with ``index``, sorted by VLAN id.

    NOTE: for this request (an AF_BRIDGE link dump) the kernel returns every
    bridge port of the netns, and pyroute2 filters by index afterwards, so the
    cost grows with the number of ports on the node.
    """
    entries: list[PortVlan] = []
    async for message in await ipr.get_vlans(index=index):
        spec = message.get("IFLA_AF_SPEC")
        # No IFLA_AF_SPEC: the port has no VLAN entry, or the kernel lacks VLAN filtering.
        if spec is None:
            continue
        for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
            flags = info["flags"]
            entries.append(
                PortVlan(
                    vid=info["vid"],
                    pvid=bool(flags & BRIDGE_VLAN_INFO_PVID),
                    untagged=bool(flags & BRIDGE_VLAN_INFO_UNTAGGED),
                )
            )
    return tuple(sorted(entries))


async def check_port_vlan(ipr: Any, *, bridge: Message, port: Message, vlan: int) -> None:
    """Raise CheckFailedError unless ``port`` carries ``vlan`` alone, as PVID and egress untagged.

    The bridge must filter VLANs too, because without filtering it ignores the
    port's entries and forwards every frame.
    """
    bridge_name = bridge.get("IFLA_IFNAME")
    port_name = port.get("IFLA_IFNAME")
    info = bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA") or {}
    if not info.get("IFLA_BR_VLAN_FILTERING"):
        raise CheckFailedError(
            f"bridge {bridge_name!r} has VLAN filtering off, so its port {port_name!r} "
            f"is not isolated in VLAN {vlan}"
        )

    with netlink_step(f"read the VLANs of bridge port {port_name!r}"):
        found = await port_vlans(ipr, port["index"])
    expected = PortVlan(vid=vlan, pvid=True, untagged=True)
    if found != (expected,):
        raise CheckFailedError(
            f"bridge port {port_name!r} has {describe_vlans(found)}, "
            f"expected {expected.describe()} alone"
        )
