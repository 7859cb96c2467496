"""Rollback of a failed ADD: the lease goes only after the interface is gone, and a
release that ipamd cannot take during the rollback waits in the durable queue.

Each test runs a real ipamd subprocess and an in-process node daemon, and
drives them through the real shim.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from leasewire.cni.node import start_node
from leasewire.cni.releasequeue import QUEUE_FILE
from leasewire.drivers.base import Attachment, AttachRequest, DetachRequest, DriverError
from leasewire.drivers.bridge import BridgeDriver
from leasewire.drivers.netlink import host_veth_name

from .conftest import ip, link_exists, unique_name
from .daemons import Ipamd, free_port, start_ipamd, stop
from .test_faults import FixedDrivers, bound, held, make_pool, run_shim, settings, wait_until

CONFIRM = ("POST", "/v1/leases/confirm")


class FailAttachAndFirstDetach(BridgeDriver):
    """Wires the pod and then fails; the first detach fails too, later ones work."""

    def __init__(self) -> None:
        super().__init__()
        self.detach_failures = 1

    async def attach(self, request: AttachRequest) -> Attachment:
        await super().attach(request)
        raise DriverError("injected failure after the veth was created")

    async def detach(self, request: DetachRequest) -> None:
        if self.detach_failures > 0:
            self.detach_failures -= 1
            raise DriverError("injected failure while removing the interface")
        await super().detach(request)


@dataclass
class RestartableIpamd:
    """An ipamd of one test on a fixed port and SQLite file, which the test can stop and start."""

    directory: Path
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server: Ipamd | None = None

    def start(self) -> Ipamd:
        self.server, process = start_ipamd(self.directory, self.port)
        self.processes.append(process)
        return self.server

    def stop(self) -> None:
        stop(self.processes[-1])


@pytest.fixture
def daemon_dir(session_dir: Path) -> Path:
    directory = session_dir / unique_name("rollback-")
    directory.mkdir()
    return directory


@pytest.fixture
def private_ipamd(daemon_dir: Path) -> Iterator[RestartableIpamd]:
    ipamd = RestartableIpamd(daemon_dir / "ipamd", free_port())
    ipamd.start()
    try:
        yield ipamd
    finally:
        ipamd.stop()


@pytest.fixture
def bridge_name() -> Iterator[str]:
    name = unique_name()
    yield name
    ip("link", "del", name, check=False)


@pytest.fixture
def netns_path(make_netns: Callable[[], str]) -> str:
    return f"/run/netns/{make_netns()}"


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
async def test_failed_detach_keeps_lease_until_cleanup(
    daemon_dir: Path,
    private_ipamd: RestartableIpamd,
    bridge_name: str,
    netns_path: str,
    cleanup: str,
) -> None:
    ipamd = private_ipamd.server
    assert ipamd is not None
    pool = make_pool(ipamd)
    veth = host_veth_name("pod-keep", "eth0")
    runner = await start_node(
        settings(daemon_dir, ipamd.url), FixedDrivers(FailAttachAndFirstDetach())
    )
    try:
        sock = daemon_dir / "node.sock"
        added = await run_shim(
            sock, "ADD", "pod-keep", netns_path, pool=pool.name, bridge=bridge_name
        )
        # The interface is still there, so its address must stay leased.
        link_after_add = link_exists(veth)
        bound_after_add = bound(ipamd, pool, "pod-keep")

        if cleanup == "DEL":
            done = await run_shim(
                sock, "DEL", "pod-keep", netns_path, pool=pool.name, bridge=bridge_name
            )
        else:
            done = await run_shim(
                sock,
                "GC",
                "",
                "",
                pool=pool.name,
                bridge=bridge_name,
                extra={"cniVersion": "1.1.0", "cni.dev/valid-attachments": []},
            )
    finally:
        await runner.cleanup()

    assert added.exit_code != 0
    assert added.json["code"] == 102, added
    assert link_after_add
    assert len(bound_after_add) == 1
    assert done.exit_code == 0, done
    assert not link_exists(veth)
    assert held(ipamd, pool, "pod-keep") == []


@dataclass
class CutAfterConfirmProxy:
    """Forwards to ipamd, but stops ipamd right after it has confirmed a lease.

    The node daemon then gets an error for its confirm, although ipamd bound the lease.
    """

    target: str
    stop_ipamd: Callable[[], None]
    url: str = ""
    # ipamd's reply to the confirm that the node daemon never got.
    confirmed: object = None


PROXY_KEY = web.AppKey("proxy", CutAfterConfirmProxy)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)


async def _forward(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    body = await request.read()
    try:
        async with request.app[SESSION_KEY].request(
            request.method,
            proxy.target + request.path_qs,
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response:
            payload = await response.read()
            status = response.status
    except aiohttp.ClientError as error:
        return web.Response(status=502, text=f"ipamd is unreachable: {error}")
    if (request.method, request.path) == CONFIRM and status == 200 and proxy.confirmed is None:
        proxy.confirmed = json.loads(payload)
        await asyncio.to_thread(proxy.stop_ipamd)
        return web.Response(status=502, text="ipamd stopped after the confirm")
    return web.Response(body=payload, status=status, content_type="application/json")


@asynccontextmanager
async def cut_after_confirm(
    target: str, stop_ipamd: Callable[[], None]
) -> AsyncIterator[CutAfterConfirmProxy]:
    proxy = CutAfterConfirmProxy(target=target, stop_ipamd=stop_ipamd)
    app = web.Application()
    app[PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", _forward)
    async with aiohttp.ClientSession() as session:
        app[SESSION_KEY] = session
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield proxy
        finally:
            await runner.cleanup()


def moment(timestamp: str) -> datetime:
    value = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def test_rollback_release_queued_when_ipamd_stops(
    daemon_dir: Path,
    private_ipamd: RestartableIpamd,
    bridge_name: str,
    netns_path: str,
) -> None:
    ipamd = private_ipamd.server
    assert ipamd is not None
    pool = make_pool(ipamd)
    queue = daemon_dir / "state" / QUEUE_FILE
    async with cut_after_confirm(ipamd.url, private_ipamd.stop) as proxy:
        runner = await start_node(
            settings(daemon_dir, proxy.url, ipamd_timeout=2.0, release_retry_interval=0.2)
        )
        try:
            added = await run_shim(
                daemon_dir / "node.sock",
                "ADD",
                "pod-cut",
                netns_path,
                pool=pool.name,
                bridge=bridge_name,
            )
            (line,) = queue.read_text().splitlines()
            entry = json.loads(line)

            await asyncio.to_thread(private_ipamd.start)
            await wait_until(lambda: held(ipamd, pool, "pod-cut") == [], "the queued release")
            await wait_until(lambda: not queue.exists(), "the queue file to go")
        finally:
            await runner.cleanup()

    # ipamd bound the lease before it stopped, and a bound lease never expires.
    assert isinstance(proxy.confirmed, dict), proxy.confirmed
    (lease,) = proxy.confirmed["leases"]
    assert lease["state"] == "bound"
    assert added.exit_code != 0
    assert added.json["code"] == 11, added
    assert not link_exists(host_veth_name("pod-cut", "eth0"))
    assert entry["owner"]["containerID"] == "pod-cut"
    assert moment(entry["createdBefore"]) > moment(lease["createdAt"])
