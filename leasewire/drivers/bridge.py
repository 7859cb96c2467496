"""The bridge driver: a veth pair per pod, its host end enslaved to a Linux bridge.

The bridge is shared by every pod of the network on this node and carries the
pool's gateway address, so pods reach each other through the bridge and reach
the node through the gateway. attach creates the bridge when it is missing and
never removes it; detach removes only the veth pair of one attachment.

Network configuration keys read by this driver:

- ``bridge``: name of the host bridge (default ``lw0``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from ipaddress import ip_interface
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.base import (
    AttachedInterface,
    Attachment,
    AttachRequest,
    CheckFailedError,
    CheckRequest,
    DetachRequest,
    Driver,
    DriverError,
    InterfaceExistsError,
    InvalidOptionError,
    IPAddress,
    IPInterface,
    interface_name_problem,
)
from leasewire.drivers.netlink import (
    Message,
    delete_link,
    find_link,
    host_veth_name,
    link_addresses,
    link_kind,
    link_mac,
    netlink_step,
    open_netns,
    random_mac,
    temporary_name,
)

DEFAULT_BRIDGE = "lw0"
# Prefix of the pod end's name between its creation on the host and its
# rename inside the pod, so a leftover is recognisable.
PEER_PREFIX = "lwp"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BridgeOptions:
    bridge: str


def parse_options(options: Mapping[str, object]) -> BridgeOptions:
    bridge = options.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str):
        raise InvalidOptionError("bridge", bridge, "expected an interface name string")
    problem = interface_name_problem(bridge)
    if problem:
        raise InvalidOptionError("bridge", bridge, f"not a valid interface name: {problem}")
    return BridgeOptions(bridge=bridge)


def _default_route(address: IPInterface) -> str:
    return "0.0.0.0/0" if address.version == 4 else "::/0"


class BridgeDriver(Driver):
    name: ClassVar[str] = "bridge"

    def __init__(self) -> None:
        # Serialises "create the bridge, add the gateway, set it up" per bridge,
        # so that concurrent ADDs in this daemon do not race each other.
        self._bridge_locks: dict[str, asyncio.Lock] = {}

    def validate(self, options: Mapping[str, object]) -> None:
        parse_options(options)

    async def attach(self, request: AttachRequest) -> Attachment:
        options = parse_options(request.options)
        host_name = host_veth_name(request.container_id, request.ifname)
        peer_name = temporary_name(PEER_PREFIX)

        async with AsyncIPRoute() as ipr, open_netns(request.netns) as pod:
            # Fail before creating anything, so that an interface someone else
            # made stays untouched.
            if await find_link(pod, request.ifname) is not None:
                raise InterfaceExistsError(
                    f"interface {request.ifname!r} already exists in {request.netns!r}"
                )

            bridge = await self._ensure_bridge(ipr, options.bridge, request)

            async with AsyncExitStack() as undo:
                await self._create_veth(ipr, host_name, peer_name, request)
                undo.push_async_callback(self._undo_veth, ipr, host_name)

                host = await self._plug_host_end(ipr, host_name, bridge, request.mtu)
                await self._move_into_pod(ipr, peer_name, request.netns)
                pod_link = await self._configure_pod_end(pod, peer_name, request)

                # The bridge MAC can change when its first port joins.
                bridge = await find_link(ipr, options.bridge) or bridge
                undo.pop_all()

        logger.info(
            "Attached %s in %s through veth %s on bridge %s",
            request.ifname,
            request.netns,
            host_name,
            options.bridge,
        )
        return Attachment(
            interfaces=(
                AttachedInterface(name=options.bridge, mac=link_mac(bridge)),
                AttachedInterface(name=host_name, mac=link_mac(host)),
                AttachedInterface(
                    name=request.ifname, mac=link_mac(pod_link), sandbox=request.netns
                ),
            ),
            pod_interface=2,
        )

    async def detach(self, request: DetachRequest) -> None:
        # Deleting one end of a veth pair deletes the other, wherever it is, so
        # the pod end goes too, and nothing in the netns has to be opened. An
        # interface of that name that this driver did not create stays.
        host_name = host_veth_name(request.container_id, request.ifname)
        async with AsyncIPRoute() as ipr:
            with netlink_step(f"delete host veth {host_name!r}"):
                removed = await delete_link(ipr, host_name)
        if removed:
            logger.info("Deleted veth %s of %s/%s", host_name, request.container_id, request.ifname)
        else:
            logger.debug("Veth %s was already gone", host_name)

    async def check(self, request: CheckRequest) -> None:
        options = parse_options(request.options)
        host_name = host_veth_name(request.container_id, request.ifname)

        async with AsyncIPRoute() as ipr:
            host = await find_link(ipr, host_name)
            if host is None:
                raise CheckFailedError(f"host veth {host_name!r} does not exist")
            bridge = await find_link(ipr, options.bridge)
            if bridge is None:
                raise CheckFailedError(f"bridge {options.bridge!r} does not exist")
            if host.get("IFLA_MASTER") != bridge["index"]:
                raise CheckFailedError(
                    f"host veth {host_name!r} is not attached to bridge {options.bridge!r}"
                )

        async with open_netns(request.netns) as pod:
            link = await find_link(pod, request.ifname)
            if link is None:
                raise CheckFailedError(
                    f"interface {request.ifname!r} does not exist in {request.netns!r}"
                )
            expected = (str(request.address.ip), request.address.network.prefixlen)
            if expected not in await link_addresses(pod, link["index"]):
                raise CheckFailedError(
                    f"interface {request.ifname!r} in {request.netns!r} "
                    f"does not have address {request.address}"
                )
            if request.gateway is not None and not await _has_default_route(pod, request.gateway):
                raise CheckFailedError(
                    f"no default route via {request.gateway} in {request.netns!r}"
                )

    async def _ensure_bridge(self, ipr: Any, name: str, request: AttachRequest) -> Message:
        """Create the bridge if needed, give it the gateway address and set it up."""
        lock = self._bridge_locks.setdefault(name, asyncio.Lock())
        async with lock:
            bridge = await find_link(ipr, name)
            if bridge is None:
                try:
                    # A fixed MAC keeps the bridge's address stable while ports
                    # come and go, so neighbours' ARP entries for the gateway stay valid.
                    await ipr.link("add", ifname=name, kind="bridge", address=random_mac())
                    logger.info("Created bridge %s", name)
                except NetlinkError as error:
                    # Another process created it in the meantime.
                    if error.code != errno.EEXIST:
                        raise DriverError(f"failed to create bridge {name!r}: {error}") from error
                bridge = await find_link(ipr, name)
                if bridge is None:
                    raise DriverError(f"bridge {name!r} disappeared right after its creation")

            kind = link_kind(bridge)
            if kind != "bridge":
                raise DriverError(
                    f"interface {name!r} exists but is of kind {kind!r}, not a bridge; "
                    "choose another 'bridge' name in the network configuration"
                )

            if request.gateway is not None:
                gateway = ip_interface(f"{request.gateway}/{request.address.network.prefixlen}")
                try:
                    await ipr.addr(
                        "add",
                        index=bridge["index"],
                        address=str(gateway.ip),
                        prefixlen=gateway.network.prefixlen,
                    )
                except NetlinkError as error:
                    if error.code != errno.EEXIST:
                        raise DriverError(
                            f"failed to add gateway {gateway} to bridge {name!r}: {error}"
                        ) from error

            with netlink_step(f"set bridge {name!r} up"):
                await ipr.link("set", index=bridge["index"], state="up")
            return bridge

    async def _create_veth(
        self, ipr: Any, host_name: str, peer_name: str, request: AttachRequest
    ) -> None:
        try:
            await ipr.link("add", ifname=host_name, kind="veth", peer={"ifname": peer_name})
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                raise InterfaceExistsError(
                    f"host veth {host_name!r} for container {request.container_id!r} "
                    f"interface {request.ifname!r} already exists; "
                    "DEL that attachment before adding it again"
                ) from error
            raise DriverError(f"failed to create veth pair {host_name!r}: {error}") from error

    async def _plug_host_end(self, ipr: Any, host_name: str, bridge: Message, mtu: int) -> Message:
        with netlink_step(f"attach veth {host_name!r} to the bridge"):
            (host,) = await ipr.link("get", ifname=host_name)
            await ipr.link("set", index=host["index"], master=bridge["index"], mtu=mtu, state="up")
            (host,) = await ipr.link("get", index=host["index"])
        return host

    async def _move_into_pod(self, ipr: Any, peer_name: str, netns: str) -> None:
        with netlink_step(f"move veth {peer_name!r} into {netns!r}"):
            (peer,) = await ipr.link("get", ifname=peer_name)
            fd = os.open(netns, os.O_RDONLY)
            try:
                await ipr.link("set", index=peer["index"], net_ns_fd=fd)
            finally:
                os.close(fd)

    async def _configure_pod_end(self, pod: Any, peer_name: str, request: AttachRequest) -> Message:
        """Rename the moved peer to CNI_IFNAME and give it the address and routes."""
        address = request.address
        with netlink_step(f"find veth {peer_name!r} in {request.netns!r}"):
            # The ifindex can change when a link moves between namespaces, so
            # look the link up again by name.
            (link,) = await pod.link("get", ifname=peer_name)
        index = link["index"]

        with netlink_step(f"rename {peer_name!r} to {request.ifname!r} in {request.netns!r}"):
            await pod.link("set", index=index, ifname=request.ifname, mtu=request.mtu)
        with netlink_step(f"add address {address} to {request.ifname!r}"):
            await pod.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        with netlink_step(f"set {request.ifname!r} up in {request.netns!r}"):
            await pod.link("set", index=index, state="up")
        if request.gateway is not None:
            with netlink_step(f"add default route via {request.gateway} in {request.netns!r}"):
                await pod.route("add", dst=_default_route(address), gateway=str(request.gateway))

        (link,) = await pod.link("get", index=index)
        return link

    async def _undo_veth(self, ipr: Any, host_name: str) -> None:
        """Delete the veth pair of a failed attach. A netlink or OS error is logged, not raised."""
        try:
            await delete_link(ipr, host_name)
            logger.info("Rolled back veth %s", host_name)
        except (NetlinkError, OSError):
            logger.exception(
                "Failed to delete veth %s while rolling back; delete it by hand", host_name
            )


async def _has_default_route(pod: Any, gateway: IPAddress) -> bool:
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    async for route in await pod.route("dump", family=family):
        if route["dst_len"] == 0 and route.get("RTA_GATEWAY") == str(gateway):
            return True
    return False
