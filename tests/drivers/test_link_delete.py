"""Deleting host links from a worker thread: the call returns at the kernel's announcement.

Runs on this host's kernel with veth pairs whose pod ends sit in test namespaces.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from leasewire.drivers.netlink import (
    RTM_DELLINK,
    _announces_deletion,
    delete_link_in_thread,
)

from .conftest import ROOT_ONLY, Namespaces, in_netns, run, unique_name

RTM_NEWLINK = 16


def veth_into(spaces: Namespaces, netns: str) -> tuple[str, str]:
    """Create a veth pair with its peer in ``netns`` and an address on the peer."""
    host, peer = unique_name("lwtd"), unique_name("lwtq")
    run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns)
    spaces.host_link(host)
    run("ip", "link", "set", host, "up")
    run("ip", "-n", netns.rsplit("/", 1)[1], "addr", "add", "192.0.2.7/24", "dev", peer)
    run("ip", "-n", netns.rsplit("/", 1)[1], "link", "set", peer, "up")
    return host, peer


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def link_message(kind: int, index: int) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_announcement_matches_kind_and_index() -> None:
    assert _announces_deletion(link_message(RTM_DELLINK, 7), 7)
    assert not _announces_deletion(link_message(RTM_DELLINK, 8), 7)
    assert not _announces_deletion(link_message(RTM_NEWLINK, 7), 7)
    both = link_message(RTM_NEWLINK, 7) + link_message(RTM_DELLINK, 7)
    assert _announces_deletion(both, 7)
    assert not _announces_deletion(link_message(RTM_DELLINK, 7)[:20], 7)


@ROOT_ONLY
async def test_delete_removes_both_ends(spaces: Namespaces) -> None:
    netns = spaces.netns()
    host, peer = veth_into(spaces, netns)

    assert await delete_link_in_thread(host)

    assert not link_exists(host)
    pod_links = in_netns(netns, "ip", "-o", "link", "show")
    assert peer not in pod_links.stdout
    addresses = in_netns(netns, "ip", "-o", "addr", "show")
    assert "192.0.2.7" not in addresses.stdout
    # The name is free again at once, while the kernel may still be freeing the old link.
    run("ip", "link", "add", host, "type", "veth", "peer", "name", unique_name("lwtr"))
    assert link_exists(host)


@ROOT_ONLY
async def test_delete_missing_link_is_false() -> None:
    assert not await delete_link_in_thread(unique_name("lwtz"))


@ROOT_ONLY
async def test_parallel_deletes_all_finish(spaces: Namespaces) -> None:
    netns = spaces.netns()
    hosts = []
    for _ in range(12):
        host, peer = unique_name("lwtd"), unique_name("lwtq")
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns)
        spaces.host_link(host)
        hosts.append(host)

    results = await asyncio.gather(*(delete_link_in_thread(host) for host in hosts))

    assert results == [True] * len(hosts)
    assert [host for host in hosts if link_exists(host)] == []
    assert "lwtq" not in in_netns(netns, "ip", "-o", "link", "show").stdout
