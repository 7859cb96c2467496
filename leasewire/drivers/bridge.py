"""The bridge driver: a veth pair per pod, its host end enslaved to a Linux bridge.

The bridge is shared by every pod of the network on this node and carries the
pool's gateway address, so pods reach each other through the bridge and reach
the node through the gateway. attach creates the bridge when it is missing and
never removes it; detach removes only the veth pair of one attachment.

Network configuration keys read by this driver:

- ``bridge``: name of the host bridge (default ``lw0``).
- ``vlan``: VLAN id 1-4094 of the pod's bridge port (default: none). The
  bridge gets VLAN filtering, the port carries the VLAN untagged as its PVID,
  and the gateway addresses sit on a VLAN link ``<bridge>.<vlan>`` on top of
  the bridge (this needs the kernel's 8021q module).
- ``hairpinMode``: send a pod's frames back out of its own port, so a pod can
  reach itself through a service address (default false).
- ``promiscMode``: set the bridge promiscuous (default false).

The bridge is created with the configured MTU. Every leased address of the
pod (IPv4 and IPv6) is configured, its pool's gateway added to the bridge and
a default route per family added in the pod. IPv6 addresses skip duplicate
address detection.

attach creates the veth pair in one request: the host end up on the bridge,
the peer directly in the pod's netns, both with MACs chosen here so that
nothing has to be read back. detach deletes the pair from a worker thread,
because the kernel takes about 20 ms for it inside the system call.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
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
    PodAddress,
)
from leasewire.drivers.bridge_options import BridgeOptions, parse_options, vlan_link_name
from leasewire.drivers.bridge_vlan import check_port_vlan
from leasewire.drivers.netlink import (
    Message,
    Netns,
    delete_link_in_thread,
    find_link,
    host_link_state,
    host_veth_name,
    link_index,
    link_kind,
    link_mac,
    mac_is_set,
    netlink_step,
    open_netns,
    open_pod,
    random_mac,
    temporary_name,
)
from leasewire.drivers.podnet import (
    add_address,
    add_pod_addresses,
    check_pod_link,
    is_up,
    set_pod_link_up,
)

# Prefix of the pod end's name from its creation in the pod's netns until its
# rename to CNI_IFNAME, so a leftover is recognisable.
PEER_PREFIX = "lwp"

# From linux/if.h.
IFF_UP = 0x1
IFF_PROMISC = 0x100

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VethEnd:
    name: str
    mac: str


class BridgeDriver(Driver):
    name: ClassVar[str] = "bridge"

    def __init__(self) -> None:
        # Serialises "create the bridge, add the gateway, set it up" per bridge,
        # so that concurrent ADDs in this daemon do not race each other.
        self._bridge_locks: dict[str, asyncio.Lock] = {}
        # The link message of each bridge that _ensure_bridge has checked, by
        # name. A later ADD reuses it while the bridge keeps its index, and
        # reads only the flags again, because parsing a bridge's link message
        # costs about 1 ms of CPU.
        self._checked_bridges: dict[str, Message] = {}

    def validate(self, options: Mapping[str, object]) -> None:
        parse_options(options)

    async def attach(self, request: AttachRequest) -> Attachment:
        options = parse_options(request.options)
        host_name = host_veth_name(request.container_id, request.ifname)
        peer_name = temporary_name(PEER_PREFIX)

        # Both MACs are chosen here, so that no request has to read them back.
        host_mac = random_mac()
        pod_mac = request.mac or random_mac()

        async with AsyncIPRoute() as ipr, open_pod(request.netns) as pod:
            # Fail before creating anything, so that an interface someone else
            # made stays untouched.
            if link_index(pod.sock, request.ifname) is not None:
                raise InterfaceExistsError(
                    f"interface {request.ifname!r} already exists in {request.netns!r}"
                )

            bridge = await self._ensure_bridge(ipr, options, request)

            async with AsyncExitStack() as undo:
                await self._create_veth(
                    ipr,
                    host=VethEnd(name=host_name, mac=host_mac),
                    peer=VethEnd(name=peer_name, mac=pod_mac),
                    bridge=bridge,
                    pod=pod,
                    request=request,
                )
                undo.push_async_callback(self._undo_veth, host_name)

                if options.hairpin or options.vlan is not None:
                    await self._configure_port(ipr, host_name, options)
                # An interface called CNI_IFNAME that appeared in the pod since
                # the check makes the rename fail, and the undo then deletes
                # only the new veth pair.
                await self._configure_pod_end(pod, peer_name, request)

                # A joining port can change the bridge's MAC, unless it was set explicitly.
                if not mac_is_set(options.bridge):
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
                AttachedInterface(name=host_name, mac=host_mac),
                AttachedInterface(name=request.ifname, mac=pod_mac.lower(), sandbox=request.netns),
            ),
            pod_interface=2,
        )

    async def detach(self, request: DetachRequest) -> None:
        # Deleting one end of a veth pair deletes the other, wherever it is, so
        # the pod end goes too, and nothing in the netns has to be opened. An
        # interface of that name that this driver did not create stays.
        host_name = host_veth_name(request.container_id, request.ifname)
        with netlink_step(f"delete host veth {host_name!r}"):
            removed = await delete_link_in_thread(host_name)
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
            if not is_up(bridge):
                raise CheckFailedError(f"bridge {options.bridge!r} is down")
            if options.vlan is not None:
                await check_port_vlan(ipr, bridge=bridge, port=host, vlan=options.vlan)

        async with open_netns(request.netns) as pod:
            await check_pod_link(
                pod, ifname=request.ifname, netns=request.netns, addresses=request.addresses()
            )

    async def _ensure_bridge(
        self, ipr: Any, options: BridgeOptions, request: AttachRequest
    ) -> Message:
        """Create the bridge if needed, give it the gateway addresses and set it up."""
        name = options.bridge
        lock = self._bridge_locks.setdefault(name, asyncio.Lock())
        async with lock:
            # The cached message is dropped until this check succeeds again.
            bridge, flags = await self._find_bridge(
                ipr, name, self._checked_bridges.pop(name, None)
            )
            if bridge is None:
                try:
                    # A fixed MAC keeps the bridge's address stable while ports
                    # come and go, so neighbours' ARP entries for the gateway stay valid.
                    await ipr.link(
                        "add",
                        ifname=name,
                        kind="bridge",
                        address=random_mac(),
                        mtu=request.mtu,
                        state="up",
                    )
                    logger.info("Created bridge %s", name)
                except NetlinkError as error:
                    # Another process created it in the meantime.
                    if error.code != errno.EEXIST:
                        raise DriverError(f"failed to create bridge {name!r}: {error}") from error
                bridge = await find_link(ipr, name)
                if bridge is None:
                    raise DriverError(f"bridge {name!r} disappeared right after its creation")
                flags = bridge["flags"]

            kind = link_kind(bridge)
            if kind != "bridge":
                raise DriverError(
                    f"interface {name!r} exists but is of kind {kind!r}, not a bridge; "
                    "choose another 'bridge' name in the network configuration"
                )
            if options.promiscuous and not flags & IFF_PROMISC:
                with netlink_step(f"set bridge {name!r} promiscuous"):
                    await ipr.link(
                        "set", index=bridge["index"], flags=IFF_PROMISC, change=IFF_PROMISC
                    )
            if options.vlan is not None:
                await self._enable_vlan_filtering(ipr, bridge)

            if not flags & IFF_UP:
                with netlink_step(f"set bridge {name!r} up"):
                    await ipr.link("set", index=bridge["index"], state="up")

            gateway_index = bridge["index"]
            if options.vlan is not None and any(item.gateway for item in request.addresses()):
                gateway_index = await self._ensure_vlan_link(ipr, bridge, options.vlan)
            for item in request.addresses():
                if item.gateway is None:
                    continue
                gateway = ip_interface(f"{item.gateway}/{item.address.network.prefixlen}")
                with suppress(InterfaceExistsError):
                    await add_address(
                        ipr,
                        gateway_index,
                        PodAddress(address=gateway, gateway=None),
                        f"{options.gateway_link!r}",
                    )
            self._checked_bridges[name] = bridge
            return bridge

    async def _find_bridge(
        self, ipr: Any, name: str, checked: Message | None
    ) -> tuple[Message | None, int]:
        """Return the link called ``name`` and its current flags, or (None, 0) when it is missing.

        ``checked`` is the message of an earlier check. While the name still
        has that index, the message is returned again and only the flags are
        read, with an ioctl.
        """
        state = host_link_state(name)
        if state is None:
            return None, 0
        index, flags = state
        if checked is not None and checked["index"] == index:
            return checked, flags
        link = await find_link(ipr, name)
        if link is None:
            return None, 0
        return link, link["flags"]

    async def _enable_vlan_filtering(self, ipr: Any, bridge: Message) -> None:
        info = bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA") or {}
        if info.get("IFLA_BR_VLAN_FILTERING"):
            return
        try:
            await ipr.link("set", index=bridge["index"], kind="bridge", br_vlan_filtering=1)
        except NetlinkError as error:
            raise DriverError(
                f"failed to enable VLAN filtering on bridge {bridge.get('IFLA_IFNAME')!r}: "
                f"{os.strerror(error.code)}; the 'vlan' option needs a kernel with "
                "CONFIG_BRIDGE_VLAN_FILTERING"
            ) from error
        logger.info("Enabled VLAN filtering on bridge %s", bridge.get("IFLA_IFNAME"))

    async def _ensure_vlan_link(self, ipr: Any, bridge: Message, vlan: int) -> int:
        """Return the index of the VLAN link on the bridge that carries the VLAN's gateways."""
        bridge_name = bridge.get("IFLA_IFNAME")
        name = vlan_link_name(bridge_name, vlan)
        link = await find_link(ipr, name)
        if link is None:
            # The bridge itself must pass the VLAN, tagged, to its own upper links.
            with netlink_step(f"add VLAN {vlan} to bridge {bridge_name!r} itself"):
                await ipr.vlan_filter(
                    "add", index=bridge["index"], vlan_info={"vid": vlan}, vlan_flags="self"
                )
            try:
                await ipr.link("add", ifname=name, kind="vlan", link=bridge["index"], vlan_id=vlan)
                logger.info("Created VLAN link %s on bridge %s", name, bridge_name)
            except NetlinkError as error:
                if error.code == errno.EOPNOTSUPP:
                    raise DriverError(
                        f"failed to create VLAN link {name!r}: the kernel has no VLAN support "
                        "(module 8021q); load it or drop the gateway from the pool"
                    ) from error
                if error.code != errno.EEXIST:
                    raise DriverError(f"failed to create VLAN link {name!r}: {error}") from error
            link = await find_link(ipr, name)
            if link is None:
                raise DriverError(f"VLAN link {name!r} disappeared right after its creation")
        if link_kind(link) != "vlan":
            raise DriverError(
                f"interface {name!r} exists but is of kind {link_kind(link)!r}, not a VLAN link"
            )
        with netlink_step(f"set VLAN link {name!r} up"):
            await ipr.link("set", index=link["index"], state="up")
        index: int = link["index"]
        return index

    async def _create_veth(
        self,
        ipr: Any,
        *,
        host: VethEnd,
        peer: VethEnd,
        bridge: Message,
        pod: Netns,
        request: AttachRequest,
    ) -> None:
        """Create the veth pair: the host end up on the bridge, the peer down in the pod's netns.

        Creating the peer in its netns takes about 1.4 ms, moving it there
        afterwards took about 18 ms (a loop of attach calls on a 2-core VM).
        """
        try:
            await ipr.link(
                "add",
                ifname=host.name,
                kind="veth",
                address=host.mac,
                mtu=request.mtu,
                master=bridge["index"],
                state="up",
                peer={
                    "ifname": peer.name,
                    "address": peer.mac,
                    "mtu": request.mtu,
                    "net_ns_fd": pod.fd,
                },
            )
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                raise InterfaceExistsError(
                    f"host veth {host.name!r} for container {request.container_id!r} "
                    f"interface {request.ifname!r} already exists; "
                    "DEL that attachment before adding it again"
                ) from error
            raise DriverError(f"failed to create veth pair {host.name!r}: {error}") from error

    async def _configure_port(self, ipr: Any, host_name: str, options: BridgeOptions) -> None:
        """Set hairpin mode and the VLAN on the bridge port of the host end."""
        with netlink_step(f"find host veth {host_name!r}"):
            (host,) = await ipr.link("get", ifname=host_name)
        if options.hairpin:
            with netlink_step(f"set hairpin mode on bridge port {host_name!r}"):
                await ipr.brport("set", index=host["index"], mode=1)
        if options.vlan is not None:
            with netlink_step(f"put bridge port {host_name!r} in VLAN {options.vlan}"):
                await ipr.vlan_filter(
                    "add",
                    index=host["index"],
                    vlan_info={"vid": options.vlan, "flags": ["pvid", "untagged"]},
                )
                # Without this the port would also stay in the bridge's default VLAN 1.
                if options.vlan != 1:
                    await ipr.vlan_filter("del", index=host["index"], vlan_info={"vid": 1})

    async def _configure_pod_end(self, pod: Netns, peer_name: str, request: AttachRequest) -> None:
        """Rename the peer to CNI_IFNAME, set it up and give it the addresses and routes."""
        where = f"{request.ifname!r} in {request.netns!r}"
        with netlink_step(f"find veth {peer_name!r} in {request.netns!r}"):
            index = link_index(pod.sock, peer_name)
        if index is None:
            raise DriverError(
                f"veth {peer_name!r} is missing in {request.netns!r} after its creation"
            )

        try:
            await set_pod_link_up(pod.ipr, index, where=where, mtu=None, new_name=request.ifname)
        except InterfaceExistsError as error:
            raise InterfaceExistsError(
                f"interface {request.ifname!r} already exists in {request.netns!r}"
            ) from error
        await add_pod_addresses(
            pod.ipr, index, where=where, netns=request.netns, addresses=request.addresses()
        )

    async def _undo_veth(self, host_name: str) -> None:
        """Delete the veth pair of a failed attach. A netlink or OS error is logged, not raised."""
        try:
            await delete_link_in_thread(host_name)
            logger.info("Rolled back veth %s", host_name)
        except (NetlinkError, OSError):
            logger.exception(
                "Failed to delete veth %s while rolling back; delete it by hand", host_name
            )
