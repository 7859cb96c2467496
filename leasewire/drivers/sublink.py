"""Drivers whose pod interface is a child link of a host "master" interface.

macvlan and ipvlan both create a link on top of the master named in the
options, move it into the pod's namespace and configure it there. The pod
interface is the only thing they create: it disappears together with the pod's
namespace, so detach has nothing to do once the namespace is gone.

Network configuration keys read by these drivers:

- ``master``: host interface the pod interface hangs off (required).
- ``mode``: the driver's mode (see each driver).
"""

from __future__ import annotations

import abc
import errno
import logging
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.announce import announce_addresses
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
    NamespaceNotFoundError,
    interface_name_problem,
)
from leasewire.drivers.netlink import (
    Message,
    find_link,
    link_kind,
    link_mac,
    netlink_step,
    open_netns,
    temporary_name,
)
from leasewire.drivers.podnet import (
    check_pod_link,
    configure_pod_link,
    require_host_link_up,
)

# Prefix of the pod interface's name between its creation on the host and its
# rename inside the pod, so a leftover is recognisable.
CHILD_PREFIX = "lwc"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SublinkOptions:
    master: str
    mode: str


def parse_master(options: Mapping[str, object]) -> str:
    master = options.get("master")
    if master is None:
        raise InvalidOptionError("master", None, "missing: name the host interface to attach to")
    if not isinstance(master, str):
        raise InvalidOptionError("master", master, "expected an interface name string")
    problem = interface_name_problem(master)
    if problem:
        raise InvalidOptionError("master", master, f"not a valid interface name: {problem}")
    return master


class SublinkDriver(Driver):
    """Common attach, detach and check of macvlan and ipvlan."""

    kind: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]
    default_mode: ClassVar[str]

    def parse_options(self, options: Mapping[str, object]) -> SublinkOptions:
        master = parse_master(options)
        mode = options.get("mode", self.default_mode)
        if mode not in self.modes:
            raise InvalidOptionError("mode", mode, f"expected one of {', '.join(self.modes)}")
        assert isinstance(mode, str)
        return SublinkOptions(master=master, mode=mode)

    def validate(self, options: Mapping[str, object]) -> None:
        self.parse_options(options)

    @abc.abstractmethod
    def link_spec(self, options: SublinkOptions, request: AttachRequest) -> dict[str, object]:
        """Return the keyword arguments of ``link("add")`` beyond name, master and MTU."""

    @abc.abstractmethod
    def announces(self, options: SublinkOptions) -> bool:
        """Tell whether the pod interface resolves neighbours, so an announcement helps."""

    def result_mac(self, pod_link: Message, master: Message) -> str:
        return link_mac(pod_link)

    async def attach(self, request: AttachRequest) -> Attachment:
        options = self.parse_options(request.options)
        child_name = temporary_name(CHILD_PREFIX)

        async with AsyncIPRoute() as ipr, open_netns(request.netns) as pod:
            if await find_link(pod, request.ifname) is not None:
                raise InterfaceExistsError(
                    f"interface {request.ifname!r} already exists in {request.netns!r}"
                )
            master = await self._find_master(ipr, options.master, request.mtu)

            async with AsyncExitStack() as undo:
                await self._create_child(ipr, child_name, master, options, request)
                undo.push_async_callback(self._undo_child, ipr, pod, child_name, request)

                with netlink_step(f"move {child_name!r} into {request.netns!r}"):
                    (child,) = await ipr.link("get", ifname=child_name)
                    fd = os.open(request.netns, os.O_RDONLY)
                    try:
                        await ipr.link("set", index=child["index"], net_ns_fd=fd)
                    finally:
                        os.close(fd)

                with netlink_step(f"rename {child_name!r} to {request.ifname!r}"):
                    # The ifindex can change when a link moves between namespaces.
                    (child,) = await pod.link("get", ifname=child_name)
                    await pod.link("set", index=child["index"], ifname=request.ifname)
                pod_link = await configure_pod_link(
                    pod,
                    child["index"],
                    ifname=request.ifname,
                    netns=request.netns,
                    addresses=request.addresses(),
                    mtu=None,
                )
                undo.pop_all()

        mac = self.result_mac(pod_link, master)
        if self.announces(options):
            await announce_addresses(
                request.netns,
                request.ifname,
                link_mac(pod_link),
                [item.address.ip for item in request.addresses()],
            )
        logger.info(
            "Attached %s in %s as %s %s on master %s",
            request.ifname,
            request.netns,
            self.kind,
            options.mode,
            options.master,
        )
        return Attachment(
            interfaces=(AttachedInterface(name=request.ifname, mac=mac, sandbox=request.netns),),
            pod_interface=0,
        )

    async def detach(self, request: DetachRequest) -> None:
        if not request.netns:
            logger.debug("No netns for %s: its %s link went with it", request.ifname, self.kind)
            return
        try:
            async with open_netns(request.netns) as pod:
                link = await find_link(pod, request.ifname)
                if link is None:
                    logger.debug("%s in %s was already gone", request.ifname, request.netns)
                    return
                kind = link_kind(link)
                if kind != self.kind:
                    # Not ours: another plugin or an earlier attach with another driver.
                    logger.warning(
                        "Left %s in %s alone: it is a %s link, not %s",
                        request.ifname,
                        request.netns,
                        kind,
                        self.kind,
                    )
                    return
                with netlink_step(f"delete {request.ifname!r} in {request.netns!r}"):
                    try:
                        await pod.link("del", index=link["index"])
                    except NetlinkError as error:
                        if error.code != errno.ENODEV:
                            raise
        except NamespaceNotFoundError:
            logger.debug("Netns %s is gone and with it %s", request.netns, request.ifname)
            return
        logger.info("Deleted %s link %s in %s", self.kind, request.ifname, request.netns)

    async def check(self, request: CheckRequest) -> None:
        options = self.parse_options(request.options)
        await require_host_link_up(options.master, f"master interface {options.master!r}")

        async with open_netns(request.netns) as pod:
            link = await check_pod_link(
                pod, ifname=request.ifname, netns=request.netns, addresses=request.addresses()
            )
        kind = link_kind(link)
        if kind != self.kind:
            raise CheckFailedError(
                f"interface {request.ifname!r} in {request.netns!r} is a {kind} link, "
                f"not {self.kind}"
            )

    async def _create_child(
        self,
        ipr: Any,
        child_name: str,
        master: Message,
        options: SublinkOptions,
        request: AttachRequest,
    ) -> None:
        spec = self.link_spec(options, request)
        action = f"create {self.kind} link on master {options.master!r}"
        try:
            await ipr.link("add", ifname=child_name, link=master["index"], mtu=request.mtu, **spec)
        except NetlinkError as error:
            if error.code == errno.EOPNOTSUPP:
                raise DriverError(
                    f"failed to {action}: this kernel has no {self.kind} support; "
                    f"load the {self.kind} module (modprobe {self.kind}) or use another driver"
                ) from error
            with netlink_step(action):
                raise

    async def _find_master(self, ipr: Any, name: str, mtu: int) -> Message:
        master = await find_link(ipr, name)
        if master is None:
            raise InvalidOptionError("master", name, "no interface of that name on this node")
        master_mtu = int(master.get("IFLA_MTU") or 0)
        if mtu > master_mtu:
            raise InvalidOptionError(
                "mtu",
                mtu,
                f"larger than the MTU {master_mtu} of master interface {name!r}; "
                f"set 'mtu' to {master_mtu} or less",
            )
        return master

    async def _undo_child(
        self, ipr: Any, pod: Any, child_name: str, request: AttachRequest
    ) -> None:
        """Delete the pod interface of a failed attach, wherever it got to."""
        for where, handle, name in (
            ("host", ipr, child_name),
            (request.netns, pod, child_name),
            (request.netns, pod, request.ifname),
        ):
            try:
                link = await find_link(handle, name)
                if link is not None and link_kind(link) == self.kind:
                    await handle.link("del", index=link["index"])
                    logger.info("Rolled back %s link %s in %s", self.kind, name, where)
                    return
            except (NetlinkError, OSError, DriverError):
                logger.exception(
                    "Failed to delete %s link %s in %s while rolling back; delete it by hand",
                    self.kind,
                    name,
                    where,
                )
