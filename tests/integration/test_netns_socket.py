"""Netlink sockets in a pod's network namespace, made by a thread instead of a forked child."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from leasewire.drivers.base import NamespaceNotFoundError
from leasewire.drivers.netlink import open_netns

from .conftest import ip, unique_name


async def _link_names(path: str) -> list[str]:
    async with open_netns(path) as pod:
        return [link.get("IFLA_IFNAME") async for link in await pod.link("dump")]


async def test_socket_sees_only_pod_links(make_netns: Callable[[], str]) -> None:
    own_namespace = os.stat("/proc/thread-self/ns/net").st_ino

    names = await _link_names(f"/run/netns/{make_netns()}")

    # A new namespace holds only its loopback device.
    assert names == ["lo"]
    # The calling thread never left its namespace.
    assert os.stat("/proc/thread-self/ns/net").st_ino == own_namespace


async def test_concurrent_opens_keep_namespaces_apart(make_netns: Callable[[], str]) -> None:
    namespaces = [make_netns() for _ in range(4)]
    markers = {}
    for namespace in namespaces:
        # A veth pair created inside the namespace names it (the kernel here has no dummy links).
        markers[namespace] = unique_name("lwv")
        ip("-n", namespace, "link", "add", markers[namespace], "type", "veth")

    seen = await asyncio.gather(*(_link_names(f"/run/netns/{name}") for name in namespaces))

    for namespace, names in zip(namespaces, seen, strict=True):
        assert markers[namespace] in names
        assert len(set(markers.values()) & set(names)) == 1
    # A thread hands its socket over just before it exits, so give the last
    # ones a moment; none may stay behind.
    opener_threads = [
        thread for thread in threading.enumerate() if thread.name.startswith("netns-")
    ]
    for thread in opener_threads:
        thread.join(timeout=5)
    assert not [thread for thread in opener_threads if thread.is_alive()]


async def test_missing_namespace_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent"

    with pytest.raises(NamespaceNotFoundError, match="does not exist"):
        await _link_names(str(path))

    assert not path.exists()


@pytest.mark.parametrize("path", ["/", "/proc/self/status"])
async def test_non_namespace_path_rejected(path: str) -> None:
    with pytest.raises(NamespaceNotFoundError, match="Invalid argument"):
        await _link_names(path)
