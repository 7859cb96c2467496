"""Configure and verify the pod end of an attachment: addresses, link state and routes.

Shared by every driver once its interface sits in the pod's namespace under
its final name. IPv6 addresses are added with the "nodad" flag, so the pod can
use them at once instead of after the 1-2 s of duplicate address detection;
ipamd's lease is what guarantees that the address is unique.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.base import CheckFailedError, DriverError, IPAddress, PodAddress
from leasewire.drivers.netlink import Message, find_link, link_addresses, netlink_step

# IFA_F_NODAD from linux/if_addr.h: the address skips duplicate address detection.
IFA_F_NODAD = 0x02
IFF_UP = 0x1


def default_route(version: int) -> str:
    return "0.0.0.0/0" if version == 4 else "::/0"


async def add_address(ipr: Any, index: int, item: PodAddress, where: str) -> None:
    """Add one leased address to the link ``index``; IPv6 without DAD."""
    address = item.address
    flags = IFA_F_NODAD if address.version == 6 else 0
    with netlink_step(f"add address {address} to {where}"):
        await ipr.addr(
            "add",
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            flags=flags,
        )


async def set_pod_link_up(
    pod: Any, index: int, *, where: str, mtu: int | None, new_name: str | None = None
) -> None:
    """Set the pod interface up, with its MTU and new name, in one request.

    The kernel renames and sets the MTU before it changes the flags, and a
    link must be down to be renamed.
    """
    changes: dict[str, Any] = {"state": "up"}
    action = f"set {where} up"
    if new_name is not None:
        changes["ifname"] = new_name
        action = f"rename link {index} to {where} and set it up"
    if mtu is not None:
        changes["mtu"] = mtu
        action += f" with MTU {mtu}"
    with netlink_step(action):
        await pod.link("set", index=index, **changes)


async def add_pod_addresses(
    pod: Any, index: int, *, where: str, netns: str, addresses: Sequence[PodAddress]
) -> None:
    """Add the leased addresses to the pod interface, and one default route per family.

    The first lease of a family with a gateway sets that family's default route.
    """
    for item in addresses:
        await add_address(pod, index, item, where)
    routed: set[int] = set()
    for item in addresses:
        if item.gateway is None or item.address.version in routed:
            continue
        routed.add(item.address.version)
        with netlink_step(f"add default route via {item.gateway} in {netns!r}"):
            await pod.route(
                "add",
                dst=default_route(item.address.version),
                gateway=str(item.gateway),
                oif=index,
            )


async def configure_pod_link(
    pod: Any,
    index: int,
    *,
    ifname: str,
    netns: str,
    addresses: Sequence[PodAddress],
    mtu: int | None,
) -> Message:
    """Give the pod interface its MTU and addresses, set it up and add the default routes.

    Returns the link as it is afterwards.
    """
    where = f"{ifname!r} in {netns!r}"
    await set_pod_link_up(pod, index, where=where, mtu=mtu)
    await add_pod_addresses(pod, index, where=where, netns=netns, addresses=addresses)
    (link,) = await pod.link("get", index=index)
    return link


async def has_default_route(pod: Any, gateway: IPAddress) -> bool:
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    async for route in await pod.route("dump", family=family):
        if route["dst_len"] == 0 and route.get("RTA_GATEWAY") == str(gateway):
            return True
    return False


async def check_pod_link(
    pod: Any, *, ifname: str, netns: str, addresses: Sequence[PodAddress]
) -> Message:
    """Raise CheckFailedError unless ``ifname`` exists in ``pod`` with every address and route."""
    try:
        (link,) = await pod.link("get", ifname=ifname)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            raise CheckFailedError(f"interface {ifname!r} does not exist in {netns!r}") from None
        raise DriverError(f"failed to look up {ifname!r} in {netns!r}: {error}") from error
    present = await link_addresses(pod, link["index"])
    routed: set[int] = set()
    for item in addresses:
        expected = (str(item.address.ip), item.address.network.prefixlen)
        if expected not in present:
            raise CheckFailedError(
                f"interface {ifname!r} in {netns!r} does not have address {item.address}"
            )
        if item.gateway is None or item.address.version in routed:
            continue
        routed.add(item.address.version)
        if not await has_default_route(pod, item.gateway):
            raise CheckFailedError(f"no default route via {item.gateway} in {netns!r}")
    return link


def is_up(link: Message) -> bool:
    return bool(link["flags"] & IFF_UP)


async def require_host_link_up(name: str, description: str) -> None:
    """Raise CheckFailedError unless the host link ``name`` exists and is up.

    ``description`` names the link in the message, e.g. "master interface 'eth1'".
    """
    async with AsyncIPRoute() as ipr:
        link = await find_link(ipr, name)
    if link is None:
        raise CheckFailedError(f"{description} does not exist")
    if not is_up(link):
        raise CheckFailedError(f"{description} is down")
