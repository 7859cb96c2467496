"""Small netlink helpers shared by the drivers, on top of pyroute2's AsyncIPRoute.

pyroute2 raises ``NetlinkError`` with a kernel errno. The helpers here turn the
few errnos that callers act on into the driver exceptions of ``base``, so that
drivers test "already gone" or "already there" by type, not by number.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@asynccontextmanager
async def open_netns(path: str) -> AsyncIterator[Any]:
    """Open an AsyncIPRoute inside the network namespace at ``path``.

    The socket is created by a thread that enters the namespace (see
    ``nssocket``). The path is only opened, never created, so a missing or
    invalid namespace raises NamespaceNotFoundError.
    """
    try:
        sock = await netlink_socket_in(path)
    except FileNotFoundError as error:
        raise NamespaceNotFoundError(f"network namespace {path!r} does not exist") from error
    except OSError as error:
        raise NamespaceNotFoundError(
            f"failed to open network namespace {path!r}: {error.strerror or error}"
        ) from error
    try:
        async with AsyncIPRoute(use_socket=sock) as ipr:
            yield ipr
    finally:
        # pyroute2 closes only the sockets it created itself.
        sock.close()


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


async def link_addresses(ipr: Any, index: int) -> list[tuple[str, int]]:
    """Return the (address, prefix length) pairs configured on a link."""
    return [
        (message.get("IFA_ADDRESS"), message["prefixlen"])
        async for message in await ipr.addr("dump", index=index)
    ]


def link_mac(link: Message) -> str:
    mac: str = link.get("IFLA_ADDRESS") or ""
    return mac.lower()


def link_kind(link: Message) -> str | None:
    info = link.get("IFLA_LINKINFO")
    if info is None:
        return None
    kind: str | None = info.get("IFLA_INFO_KIND")
    return kind
