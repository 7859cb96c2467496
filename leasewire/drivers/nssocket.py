"""Create a NETLINK_ROUTE socket inside another network namespace without a fork.

pyroute2 0.9 opens ``AsyncIPRoute(netns=...)`` by forking a child that enters
the namespace and passes the socket back, and it ends the child with SIGTERM.
In the node daemon that took about 30 ms per open, against about 0.3 ms for
the thread below (bench/bench_cni.py and a loop of opens, on a 2-core VM).

A netlink socket stays in the namespace it was created in, so it is enough
that one thread enters the namespace with setns(2), creates the socket and
returns. The socket then goes to pyroute2 with ``AsyncIPRoute(use_socket=...)``.
The caller also gets the open namespace file, which it can pass on as
IFLA_NET_NS_FD to create a link directly in the namespace.

Every call runs in a new thread of its own. If the thread cannot return to
its namespace, it ends anyway, so no thread of this process stays in a pod's
namespace where later work (an ipamd request, say) would run by mistake.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading

# From linux/sched.h.
CLONE_NEWNET = 0x40000000
# pyroute2's defaults for its own netlink sockets.
BUFFER_BYTES = 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _create_in_namespace(path: str) -> tuple[socket.socket, int]:
    """Create the socket in the namespace at ``path``; run only in a thread of its own.

    Returns the socket and the open namespace file. The path is opened, never
    created, so a missing namespace raises FileNotFoundError. Raises
    RuntimeError if the thread could not return to its own namespace; the
    thread must end then.
    """
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                sock = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
                )
            finally:
                try:
                    _setns(own)
                except OSError as error:
                    raise RuntimeError(
                        f"failed to return from network namespace {path!r}: {error.strerror}"
                    ) from error
        finally:
            os.close(own)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    except BaseException:
        os.close(target)
        raise
    return sock, target


async def netlink_socket_in(path: str) -> tuple[socket.socket, int]:
    """Return a NETLINK_ROUTE socket created in the network namespace at ``path``.

    Also returns the namespace file, opened read-only; the caller closes both.
    Raises OSError (FileNotFoundError for a missing path, EINVAL for a file
    that is not a network namespace).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[socket.socket, int]] = loop.create_future()

    def deliver(opened: tuple[socket.socket, int] | None, error: BaseException | None) -> None:
        if done.cancelled():
            if opened is not None:
                opened[0].close()
                os.close(opened[1])
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(opened)  # type: ignore[arg-type]

    def run() -> None:
        try:
            opened = _create_in_namespace(path)
        except BaseException as error:
            loop.call_soon_threadsafe(deliver, None, error)
        else:
            loop.call_soon_threadsafe(deliver, opened, None)

    threading.Thread(target=run, name=f"netns-socket {path}", daemon=True).start()
    return await done
