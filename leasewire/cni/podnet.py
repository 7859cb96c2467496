"""Steps inside the pod's network namespace that every driver shares.

The driver creates the pod interface with its addresses, the requested MAC
and the default routes. The node daemon then makes sure of what the lease and
the runtime ask for, whatever the driver: it sets the requested MAC and adds
further leases' addresses where the driver left them out, and it adds the
pool's extra routes. CHECK compares the pod's MAC and routes with the
previous result here.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from leasewire.cni.cniconfig import ERR_INVALID_ENV, CniError
from leasewire.cni.cniresult import ResultRoute
from leasewire.cni.timings import measure
from leasewire.drivers.base import (
    CheckFailedError,
    InterfaceExistsError,
    IPAddress,
    IPInterface,
)
from leasewire.drivers.netlink import (
    find_link,
    is_own_netns,
    link_index,
    link_mac,
    netlink_step,
    open_netns,
    open_pod,
)


@dataclass(frozen=True, kw_only=True)
class PodExtras:
    """What the node daemon applies to the pod interface after the driver's attach."""

    mac: str | None
    # Addresses of further leases, with their gateways (a default route each).
    addresses: tuple[tuple[IPInterface, IPAddress | None], ...]
    routes: tuple[ResultRoute, ...]


async def ensure_pod_interface_free(netns: str, ifname: str) -> None:
    """Raise unless ``netns`` is another network namespace without ``ifname``."""
    if is_own_netns(netns):
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_NETNS {netns!r} is the node daemon's own network namespace, not a pod's",
        )
    with measure("netlink"):
        async with open_pod(netns) as pod:
            if link_index(pod.sock, ifname) is not None:
                raise InterfaceExistsError(f"interface {ifname!r} already exists in {netns!r}")


def _family(address: IPAddress | IPInterface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


async def apply_extras(netns: str, ifname: str, extras: PodExtras) -> str | None:
    """Apply ``extras`` to the pod interface; return its MAC when one was set."""
    if extras.mac is None and not extras.addresses and not extras.routes:
        return None
    with measure("netlink"):
        async with open_netns(netns) as pod:
            with netlink_step(f"find {ifname!r} in {netns!r}"):
                (link,) = await pod.link("get", ifname=ifname)
            index = link["index"]

            if extras.mac is not None and link_mac(link) != extras.mac:
                with netlink_step(f"set MAC {extras.mac} on {ifname!r} in {netns!r}"):
                    await pod.link("set", index=index, address=extras.mac)

            for address, gateway in extras.addresses:
                try:
                    with netlink_step(f"add address {address} to {ifname!r}"):
                        await pod.addr(
                            "add",
                            index=index,
                            address=str(address.ip),
                            prefixlen=address.network.prefixlen,
                        )
                except InterfaceExistsError:
                    # The driver configured it already.
                    pass
                if gateway is not None:
                    default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
                    await _add_route(pod, index, ResultRoute(dst=default, gateway=gateway))

            for route in extras.routes:
                await _add_route(pod, index, route)

            if extras.mac is None:
                return None
            (link,) = await pod.link("get", index=index)
            return link_mac(link)


async def _add_route(pod: Any, index: int, route: ResultRoute) -> None:
    spec: dict[str, Any] = {"dst": route.dst, "oif": index}
    if route.gateway is not None:
        spec["gateway"] = str(route.gateway)
    try:
        with netlink_step(f"add route {route.dst} via {route.gateway or 'the link'}"):
            await pod.route("add", **spec)
    except InterfaceExistsError:
        # The driver installed the same route already (its default route).
        pass


async def check_pod(netns: str, ifname: str, mac: str, routes: tuple[ResultRoute, ...]) -> None:
    """Raise CheckFailedError when the pod interface's MAC or a route of the previous result differ.

    Extra routes are tolerated, because later plugins of a chain may add them.
    """
    with measure("netlink"):
        async with open_netns(netns) as pod:
            link = await find_link(pod, ifname)
            if link is None:
                raise CheckFailedError(f"interface {ifname!r} does not exist in {netns!r}")
            if mac and link_mac(link) != mac:
                raise CheckFailedError(
                    f"interface {ifname!r} in {netns!r} has MAC {link_mac(link)}, "
                    f"but the previous result says {mac}"
                )
            for route in routes:
                if not await _has_route(pod, route):
                    via = f" via {route.gateway}" if route.gateway is not None else ""
                    raise CheckFailedError(f"route {route.dst}{via} is missing in {netns!r}")


async def _has_route(pod: Any, route: ResultRoute) -> bool:
    network = ip_network(route.dst, strict=False)
    family = _family(network.network_address)
    try:
        async for message in await pod.route("dump", family=family):
            if message["dst_len"] != network.prefixlen:
                continue
            dst = message.get("RTA_DST")
            if network.prefixlen and (dst is None or ip_address(dst) != network.network_address):
                continue
            if route.gateway is not None and message.get("RTA_GATEWAY") != str(route.gateway):
                continue
            return True
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return False
        raise
    return False
