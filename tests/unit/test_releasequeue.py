"""The node daemon's durable queue of lease releases, against a real ipamd on SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from leasewire.api import Owner
from leasewire.cni.ipamclient import IpamClient
from leasewire.cni.releasequeue import QueuedRelease, ReleaseQueue
from leasewire.ipamd.app import create_app


@pytest.fixture
async def ipam(tmp_path: Path) -> AsyncIterator[IpamClient]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    async with TestServer(create_app(url)) as server, aiohttp.ClientSession() as session:
        yield IpamClient(session, str(server.make_url("")))


def owner(container: str) -> Owner:
    return Owner(cluster="c1", containerID=container, ifname="eth0")


async def test_release_queued_during_a_rewrite_is_kept(
    ipam: IpamClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    queue = ReleaseQueue(state_dir)
    await queue.add(owner("old"), "net1")

    # Hold the replay inside its rewrite of the file, as a slow disk would.
    rewriting = threading.Event()
    resume = threading.Event()
    rewrite = queue._rewrite

    def slow_rewrite(entries: list[QueuedRelease]) -> None:
        rewriting.set()
        assert resume.wait(10)
        rewrite(entries)

    monkeypatch.setattr(queue, "_rewrite", slow_rewrite)
    replay = asyncio.create_task(queue.replay(ipam))
    assert await asyncio.to_thread(rewriting.wait, 10)
    # A DEL that finds ipamd unavailable queues its release meanwhile.
    add = asyncio.create_task(queue.add(owner("new"), "net1"))
    await asyncio.sleep(0.2)
    resume.set()
    await asyncio.gather(replay, add)

    assert not queue.holds(owner("old"))
    assert queue.holds(owner("new"))
    reloaded = ReleaseQueue(state_dir)
    assert not reloaded.holds(owner("old"))
    assert reloaded.holds(owner("new"))


async def test_add_after_a_torn_line_is_kept(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = ReleaseQueue(state_dir)
    await first.add(owner("kept"), "net1")
    # A crash during an append left half a line, without its newline.
    with first.path.open("a", encoding="utf-8") as file:
        file.write('{"owner": {"cluster": "c1", "contai')

    restarted = ReleaseQueue(state_dir)
    assert restarted.holds(owner("kept"))
    await restarted.add(owner("after"), "net1")

    again = ReleaseQueue(state_dir)
    assert again.holds(owner("kept"))
    assert again.holds(owner("after"))
