"""Small netlink helpers shared by the drivers, on top of pyroute2's AsyncIPRoute.

pyroute2 raises ``NetlinkError`` with a kernel errno. The helpers here turn the
few errnos that callers act on into the driver exceptions of ``base``, so that
drivers test "already gone" or "already there" by type, not by number.

The kernel handles a netlink request inside the send system call, so a slow
request blocks the event loop of the node daemon for as long as it takes.
Deleting a veth pair takes about 20 ms (measured on a 2-core VM), so
``delete_link_in_thread`` sends that request from a worker thread instead.
Most of those 20 ms come after the deletion is visible. The kernel removes
both ends, their addresses and bridge ports, and sends its RTM_DELLINK
notification (within about 1 ms in our measurements). Only then does it wait
for RCU and reference counts, free the device and acknowledge the request.
So the caller goes on at the notification and the thread finishes alone.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.base import DriverError, InterfaceExistsError, NamespaceNotFoundError
from leasewire.drivers.nssocket import netlink_socket_in

# Maximum interface name length in bytes (the kernel's IFNAMSIZ minus the trailing NUL).
MAX_IFNAME_LENGTH = 15
HOST_VETH_PREFIX = "lw"

# pyroute2 has no type hints; a netlink message is a dict-like object.
Message = Any


def host_veth_name(container_id: str, ifname: str) -> str:
    """Return the host-side veth name of an attachment.

    The name is derived from the owner alone, so DEL finds the veth again
    without any saved state, even when the pod's netns is already gone.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[: MAX_IFNAME_LENGTH - len(HOST_VETH_PREFIX)]


def temporary_name(prefix: str) -> str:
    """Return a random interface name for a link that is renamed later."""
    return prefix + secrets.token_hex((MAX_IFNAME_LENGTH - len(prefix)) // 2)


def random_mac() -> str:
    """Return a random unicast, locally administered MAC address."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def netns_exists(path: str) -> bool:
    return os.path.exists(path)


def is_own_netns(path: str) -> bool:
    """Tell whether ``path`` is the network namespace this process runs in."""
    try:
        target = os.stat(path)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino)


@contextmanager
def netlink_step(action: str) -> Iterator[None]:
    """Turn a netlink or OS error into a DriverError that names the failed ``action``.

    ``action`` completes "failed to ...", e.g. ``create veth 'lw1234'``.
    """
    try:
        yield
    except NetlinkError as error:
        message = f"failed to {action}: {os.strerror(error.code)} (errno {error.code})"
        if error.code == errno.EEXIST:
            raise InterfaceExistsError(message) from error
        raise DriverError(message) from error
    except OSError as error:
        raise DriverError(f"failed to {action}: {error}") from error


@dataclass(frozen=True)
class Netns:
    """An open network namespace: its file and an AsyncIPRoute inside it."""

    path: str
    # The namespace file, open read-only; usable as IFLA_NET_NS_FD.
    fd: int
    ipr: Any
    sock: socket.socket

    def still_at_path(self) -> bool:
        """Tell whether ``path`` still names this namespace (it may be deleted or replaced)."""
        try:
            current = os.stat(self.path)
        except OSError:
            return False
        own = os.fstat(self.fd)
        return (current.st_dev, current.st_ino) == (own.st_dev, own.st_ino)

    def close(self) -> None:
        self.ipr.close()
        # pyroute2 closes only the sockets it created itself.
        self.sock.close()
        os.close(self.fd)


@dataclass
class _SharedNetns:
    by_path: dict[str, Netns] = field(default_factory=dict)
    # Every handle opened in the scope, also those replaced in ``by_path``.
    opened: list[Netns] = field(default_factory=list)


_shared: ContextVar[_SharedNetns | None] = ContextVar("leasewire_shared_netns", default=None)


async def _open(path: str) -> Netns:
    try:
        sock, fd = await netlink_socket_in(path)
    except FileNotFoundError as error:
        raise NamespaceNotFoundError(f"network namespace {path!r} does not exist") from error
    except OSError as error:
        raise NamespaceNotFoundError(
            f"failed to open network namespace {path!r}: {error.strerror or error}"
        ) from error
    return Netns(path=path, fd=fd, ipr=AsyncIPRoute(use_socket=sock), sock=sock)


@asynccontextmanager
async def sharing_netns() -> AsyncIterator[None]:
    """Open each network namespace at most once within the block.

    Inside the block, the first ``open_pod`` or ``open_netns`` of a path opens
    the namespace, and later ones get the same handle back, as long as the
    path still names the same namespace. The handles close when the block
    ends. The node daemon runs one ADD in such a block, so that its own
    checks and the driver share one socket. A nested block uses the outer one.
    """
    if _shared.get() is not None:
        yield
        return
    scope = _SharedNetns()
    token = _shared.set(scope)
    try:
        yield
    finally:
        _shared.reset(token)
        for handle in scope.opened:
            handle.close()


@asynccontextmanager
async def open_pod(path: str) -> AsyncIterator[Netns]:
    """Open the network namespace at ``path``, or reuse the handle of ``sharing_netns``.

    The socket is created by a thread that enters the namespace (see
    ``nssocket``). The path is only opened, never created, so a missing or
    invalid namespace raises NamespaceNotFoundError, also when a shared
    handle exists but the namespace was deleted since.
    """
    scope = _shared.get()
    if scope is None:
        handle = await _open(path)
        try:
            yield handle
        finally:
            handle.close()
        return

    shared = scope.by_path.get(path)
    if shared is None or not shared.still_at_path():
        shared = await _open(path)
        scope.by_path[path] = shared
        scope.opened.append(shared)
    yield shared


@asynccontextmanager
async def open_netns(path: str) -> AsyncIterator[Any]:
    """Open an AsyncIPRoute inside the network namespace at ``path`` (see ``open_pod``)."""
    async with open_pod(path) as pod:
        yield pod.ipr


# SIOCGIFINDEX from linux/sockios.h.
SIOCGIFINDEX = 0x8933
# struct ifreq: the name, then a union of 24 bytes whose first member is the index.
_IFREQ_INDEX = struct.Struct("=16si20x")


def link_index(sock: socket.socket, ifname: str) -> int | None:
    """Return the index of the link ``ifname`` in the namespace of ``sock``, or None.

    One ioctl, about 2 microseconds against about 0.5 ms for a netlink link
    request through pyroute2, which parses every attribute of the reply.
    The kernel looks the name up in the namespace that ``sock`` was created in.
    """
    name = ifname.encode()
    if len(name) > MAX_IFNAME_LENGTH:
        # No link has such a name, and the struct would cut it short.
        return None
    request = _IFREQ_INDEX.pack(name, 0)
    try:
        reply = fcntl.ioctl(sock, SIOCGIFINDEX, request)
    except OSError as error:
        if error.errno == errno.ENODEV:
            return None
        raise
    index: int = _IFREQ_INDEX.unpack(reply)[1]
    return index


# SIOCGIFFLAGS from linux/sockios.h.
SIOCGIFFLAGS = 0x8913
# struct ifreq with the union's first member read as the short ifr_flags.
_IFREQ_FLAGS = struct.Struct("=16sH22x")


def host_link_state(ifname: str) -> tuple[int, int] | None:
    """Return the index and flags of the link ``ifname`` in this thread's namespace, or None.

    Two ioctls on a short-lived socket, for when a full netlink link request
    would be too slow (a bridge's reply takes about 1 ms to parse).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        index = link_index(sock, ifname)
        if index is None:
            return None
        try:
            reply = fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(ifname.encode(), 0))
        except OSError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
    flags: int = _IFREQ_FLAGS.unpack(reply)[1]
    return index, flags


async def find_link(ipr: Any, ifname: str) -> Message | None:
    """Return the link called ``ifname``, or None when there is none."""
    try:
        (link,) = await ipr.link("get", ifname=ifname)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return None
        raise
    return link


async def delete_link(ipr: Any, ifname: str) -> bool:
    """Delete the link called ``ifname``; return False when it did not exist."""
    try:
        await ipr.link("del", ifname=ifname)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return False
        raise
    return True


# From linux/netlink.h and linux/rtnetlink.h.
NLMSG_ERROR = 2
RTM_DELLINK = 17
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
IFLA_IFNAME = 3
# struct nlmsghdr: length, type, flags, sequence number, port id.
_NLMSG_HEADER = struct.Struct("=IHHII")
# struct ifinfomsg: family, padding, device type, index, flags, change mask.
_IFINFO = struct.Struct("=BxHiII")
# struct rtattr: length, type.
_RTATTR = struct.Struct("=HH")
# struct nlmsgerr starts with the negative errno.
_NLMSG_ERRNO = struct.Struct("=i")


def _delete_request(ifname: str) -> bytes:
    name = ifname.encode() + b"\0"
    attribute = _RTATTR.pack(_RTATTR.size + len(name), IFLA_IFNAME) + name
    attribute += bytes(-len(attribute) % 4)
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), RTM_DELLINK, flags, 1, 0) + body


def delete_link_blocking(ifname: str) -> bool:
    """Delete the link ``ifname`` of this thread's namespace; return False when it did not exist.

    Sends one RTM_DELLINK on a blocking socket of its own and waits for the
    kernel's acknowledgement. Raises NetlinkError for any other kernel error.
    """
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    ) as sock:
        sock.send(_delete_request(ifname))
        reply = sock.recv(65536)
    _, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
    if kind != NLMSG_ERROR:
        raise DriverError(f"unexpected netlink reply of type {kind} to deleting {ifname!r}")
    (code,) = _NLMSG_ERRNO.unpack_from(reply, _NLMSG_HEADER.size)
    if code == 0:
        return True
    if -code == errno.ENODEV:
        return False
    raise NetlinkError(-code)


# From linux/rtnetlink.h: the multicast group of link notifications.
RTMGRP_LINK = 0x1

logger = logging.getLogger(__name__)

# Threads that wait in the kernel while it frees deleted links. They use
# no CPU then, so there are more of them than cores.
_LINK_DELETERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="link-delete")
# Deletions that were announced but whose system call has not returned yet.
_FINISHING: set[asyncio.Future[bool]] = set()


def _link_monitor() -> socket.socket:
    """Open a non-blocking netlink socket that receives this namespace's link notifications."""
    monitor = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    try:
        monitor.bind((0, RTMGRP_LINK))
        monitor.setblocking(False)
    except OSError:
        monitor.close()
        raise
    return monitor


def _announces_deletion(data: bytes, index: int) -> bool:
    """Tell whether the netlink messages in ``data`` include RTM_DELLINK for link ``index``."""
    offset = 0
    while offset + _NLMSG_HEADER.size + _IFINFO.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            return False
        if kind == RTM_DELLINK:
            _, _, link_index, _, _ = _IFINFO.unpack_from(data, offset + _NLMSG_HEADER.size)
            if link_index == index:
                return True
        offset += (length + 3) & ~3
    return False


def _read_announcements(
    monitor: socket.socket, index: int, announced: asyncio.Future[None]
) -> None:
    while not announced.done():
        try:
            data = monitor.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            # ENOBUFS: notifications were dropped, so the system call's result decides.
            logger.debug("Link notifications lost (%s); waiting for the deletion itself", error)
            announced.cancel()
            return
        if _announces_deletion(data, index):
            announced.set_result(None)


def _report_late_failure(ifname: str, deleting: asyncio.Future[bool]) -> None:
    _FINISHING.discard(deleting)
    if not deleting.cancelled() and deleting.exception() is not None:
        # The kernel announced the deletion, so nothing is left to undo.
        logger.warning(
            "Deleting link %s failed after it was announced: %s", ifname, deleting.exception()
        )


async def delete_link_in_thread(ifname: str) -> bool:
    """Delete the host link ``ifname`` from a worker thread, like ``delete_link``.

    Returns when the kernel announces the deletion with RTM_DELLINK, or when
    the deletion fails, whichever comes first. The event loop goes on serving
    other requests meanwhile.
    """
    loop = asyncio.get_running_loop()
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        return False
    with _link_monitor() as monitor:
        deleting = loop.run_in_executor(_LINK_DELETERS, delete_link_blocking, ifname)
        announced: asyncio.Future[None] = loop.create_future()
        loop.add_reader(monitor.fileno(), _read_announcements, monitor, index, announced)
        try:
            await asyncio.wait((deleting, announced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(monitor.fileno())
            announced.cancel()
    if deleting.done() or announced.cancelled():
        # Failed, finished first, or not announced: the system call's result counts.
        return await deleting
    _FINISHING.add(deleting)
    deleting.add_done_callback(lambda future: _report_late_failure(ifname, future))
    return True


async def link_addresses(ipr: Any, index: int) -> list[tuple[str, int]]:
    """Return the (address, prefix length) pairs configured on a link."""
    return [
        (message.get("IFA_ADDRESS"), message["prefixlen"])
        async for message in await ipr.addr("dump", index=index)
    ]


# NET_ADDR_SET from linux/netdevice.h: the MAC was set from user space.
NET_ADDR_SET = 3


def mac_is_set(ifname: str) -> bool:
    """Tell whether the MAC of the host link ``ifname`` was set explicitly.

    The kernel keeps such a MAC; a bridge's random MAC follows its ports
    instead. Reads sysfs, which is cheaper than a netlink request; False
    when it cannot be read.
    """
    try:
        with open(f"/sys/class/net/{ifname}/addr_assign_type") as file:
            return int(file.read()) == NET_ADDR_SET
    except (OSError, ValueError):
        return False


def link_mac(link: Message) -> str:
    mac: str = link.get("IFLA_ADDRESS") or ""
    return mac.lower()


def link_kind(link: Message) -> str | None:
    info = link.get("IFLA_LINKINFO")
    if info is None:
        return None
    kind: str | None = info.get("IFLA_INFO_KIND")
    return kind
