"""Every ADD step failing, and DEL with ipamd down: afterwards no leftover
interface and no bound lease, and a retried ADD succeeds.

Each test runs a real ipamd subprocess (sometimes behind a proxy that holds
one request back) and a node daemon, in-process or as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leasewire.cni.node import NodeSettings, start_node
from leasewire.cni.releasequeue import QUEUE_FILE
from leasewire.drivers.base import Attachment, AttachRequest, DetachRequest, Driver, DriverError
from leasewire.drivers.bridge import BridgeDriver
from leasewire.drivers.netlink import host_veth_name
from leasewire.drivers.registry import DriverSet

from .conftest import (
    CLUSTER,
    NODE,
    Pool,
    ShimOutput,
    exec_shim,
    free_cidr,
    ip,
    link_exists,
    unique_name,
)
from .daemons import Ipamd, free_port, start_ipamd, start_node_daemon, stop
from .ipamdproxy import run_proxy

CONFIRM = ("POST", "/v1/leases/confirm")
CREATE = ("POST", "/v1/leases")


async def run_shim(
    socket_path: Path,
    command: str,
    container_id: str,
    netns: str,
    *,
    pool: str,
    bridge: str,
    extra: dict[str, object] | None = None,
) -> ShimOutput:
    config = {
        "cniVersion": "1.0.0",
        "name": "faultnet",
        "type": "leasewire",
        "pool": pool,
        "bridge": bridge,
        "socket": str(socket_path),
        **(extra or {}),
    }
    return await exec_shim(command, container_id, netns, config, pod_name="fault")


def make_pool(ipamd: Ipamd) -> Pool:
    """Create a pool in a free 10.x.y.0/24 of ``ipamd``."""
    for _ in range(20):
        cidr = free_cidr()
        name = unique_name("pool-")
        gateway = cidr.network_address + 1
        status, payload = ipamd.request(
            "POST", "/v1/pools", {"name": name, "cidr": str(cidr), "gateway": str(gateway)}
        )
        if status == 201:
            return Pool(name=name, cidr=cidr, gateway=gateway)
        assert payload.get("code") == "pool_overlap", payload
    raise AssertionError("no free CIDR for a test pool after 20 tries")


def held(ipamd: Ipamd, pool: Pool, container_id: str) -> list[dict[str, Any]]:
    owner = {"cluster": CLUSTER, "containerID": container_id, "ifname": "eth0"}
    return [lease for lease in ipamd.leases(pool.name) if lease["owner"] == owner]


def bound(ipamd: Ipamd, pool: Pool, container_id: str) -> list[dict[str, Any]]:
    return [lease for lease in held(ipamd, pool, container_id) if lease["state"] == "bound"]


async def wait_until(check: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def daemon_dir(session_dir: Path) -> Path:
    directory = session_dir / unique_name("fault-")
    directory.mkdir()
    return directory


@pytest.fixture
def private_ipamd(
    daemon_dir: Path,
) -> Iterator[tuple[Ipamd, Callable[[], None], Callable[[], None]]]:
    """Yield an ipamd of this test alone, with functions that stop and restart it."""
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    server, process = start_ipamd(daemon_dir / "ipamd", port)
    processes.append(process)

    def stop_it() -> None:
        stop(processes[-1])

    def start_it() -> None:
        _, again = start_ipamd(daemon_dir / "ipamd", port)
        processes.append(again)

    try:
        yield server, stop_it, start_it
    finally:
        stop(processes[-1])


@pytest.fixture
def bridge_name() -> Iterator[str]:
    name = unique_name()
    yield name
    ip("link", "del", name, check=False)


@pytest.fixture
def netns_path(make_netns: Callable[[], str]) -> str:
    return f"/run/netns/{make_netns()}"


def settings(directory: Path, url: str, **extra: Any) -> NodeSettings:
    return NodeSettings(
        socket_path=directory / "node.sock",
        ipamd_url=url,
        cluster=CLUSTER,
        node_name="fault-node",
        state_dir=directory / "state",
        **extra,
    )


class FixedDrivers(DriverSet):
    """A driver set whose bridge driver is replaced, as a third-party driver would be."""

    def __init__(self, bridge: Driver) -> None:
        super().__init__()
        self._bridge = bridge

    def get(self, name: str) -> Driver:
        return self._bridge if name == "bridge" else super().get(name)


class FailAfterAttach(BridgeDriver):
    """Wires the pod completely, veth included, then fails."""

    async def attach(self, request: AttachRequest) -> Attachment:
        await super().attach(request)
        raise DriverError("injected failure after the veth was created")


class FailDetach(BridgeDriver):
    """Wires pods normally but cannot remove their interfaces."""

    async def detach(self, request: DetachRequest) -> None:
        raise DriverError("injected failure while removing the interface")


class RemoveNetnsFirst(BridgeDriver):
    """Deletes the pod's netns between the node daemon's checks and the attach."""

    async def attach(self, request: AttachRequest) -> Attachment:
        ip("netns", "del", Path(request.netns).name)
        return await super().attach(request)


@pytest.fixture
async def in_process_node(daemon_dir: Path, ipamd: Ipamd) -> AsyncIterator[Callable[..., Any]]:
    runners: list[Any] = []

    async def start(url: str | None = None, drivers: DriverSet | None = None, **extra: Any) -> Path:
        runner = await start_node(settings(daemon_dir, url or ipamd.url, **extra), drivers)
        runners.append(runner)
        return daemon_dir / "node.sock"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("driver", [FailAfterAttach(), RemoveNetnsFirst()], ids=["fail", "netns"])
async def test_add_driver_failure_leaves_nothing(
    in_process_node: Callable[..., Any],
    ipamd: Ipamd,
    bridge_name: str,
    make_netns: Callable[[], str],
    driver: Driver,
) -> None:
    pool = make_pool(ipamd)
    sock = await in_process_node(drivers=FixedDrivers(driver))
    netns = f"/run/netns/{make_netns()}"

    output = await run_shim(sock, "ADD", "pod-fault", netns, pool=pool.name, bridge=bridge_name)

    assert output.exit_code != 0
    assert output.json["code"] in (102, 104), output
    assert not link_exists(host_veth_name("pod-fault", "eth0"))
    assert held(ipamd, pool, "pod-fault") == []


async def test_gc_keeps_lease_when_detach_fails(
    in_process_node: Callable[..., Any], ipamd: Ipamd, bridge_name: str, netns_path: str
) -> None:
    pool = make_pool(ipamd)
    sock = await in_process_node(drivers=FixedDrivers(FailDetach()))
    added = await run_shim(sock, "ADD", "pod-gc", netns_path, pool=pool.name, bridge=bridge_name)
    assert added.exit_code == 0, added

    collected = await run_shim(
        sock,
        "GC",
        "",
        "",
        pool=pool.name,
        bridge=bridge_name,
        extra={"cniVersion": "1.1.0", "cni.dev/valid-attachments": []},
    )

    # The address still sits on the pod's interface, so the lease must stay.
    assert collected.exit_code != 0
    assert collected.json["code"] == 11, collected
    assert len(bound(ipamd, pool, "pod-gc")) == 1
    assert link_exists(host_veth_name("pod-gc", "eth0"))


async def test_add_retried_after_driver_failure(
    daemon_dir: Path, ipamd: Ipamd, bridge_name: str, netns_path: str
) -> None:
    pool = make_pool(ipamd)
    failing = await start_node(settings(daemon_dir, ipamd.url), FixedDrivers(FailAfterAttach()))
    try:
        first = await run_shim(
            daemon_dir / "node.sock",
            "ADD",
            "pod-retry",
            netns_path,
            pool=pool.name,
            bridge=bridge_name,
        )
    finally:
        await failing.cleanup()
    assert first.exit_code != 0

    working = await start_node(settings(daemon_dir, ipamd.url))
    try:
        second = await run_shim(
            daemon_dir / "node.sock",
            "ADD",
            "pod-retry",
            netns_path,
            pool=pool.name,
            bridge=bridge_name,
        )
    finally:
        await working.cleanup()

    assert second.exit_code == 0, second
    assert len(bound(ipamd, pool, "pod-retry")) == 1


@pytest.mark.parametrize("slow", [CREATE, CONFIRM], ids=["lease", "confirm"])
async def test_add_with_slow_ipamd_fails_cleanly(
    in_process_node: Callable[..., Any],
    ipamd: Ipamd,
    bridge_name: str,
    netns_path: str,
    slow: tuple[str, str],
) -> None:
    pool = make_pool(ipamd)
    async with run_proxy(ipamd.url) as proxy:
        proxy.delays[slow] = 3.0
        sock = await in_process_node(url=proxy.url, ipamd_timeout=1.0)

        output = await run_shim(
            sock, "ADD", "pod-slow", netns_path, pool=pool.name, bridge=bridge_name
        )

        assert output.exit_code != 0
        assert output.json["code"] == 11, output
        assert "timed out" in output.json["msg"]
        assert not link_exists(host_veth_name("pod-slow", "eth0"))
        # The late request may still create a pending lease; it must not be bound.
        await asyncio.sleep(2.5)
        assert bound(ipamd, pool, "pod-slow") == []

        proxy.delays.clear()
        retried = await run_shim(
            sock, "ADD", "pod-slow", netns_path, pool=pool.name, bridge=bridge_name
        )

    assert retried.exit_code == 0, retried
    assert len(bound(ipamd, pool, "pod-slow")) == 1


async def test_node_killed_mid_add_cleans_up_on_restart(
    daemon_dir: Path, ipamd: Ipamd, bridge_name: str, netns_path: str
) -> None:
    pool = make_pool(ipamd)
    veth = host_veth_name("pod-kill", "eth0")
    async with run_proxy(ipamd.url) as proxy:
        proxy.delays[CONFIRM] = 60.0
        daemon, process = start_node_daemon(daemon_dir, proxy.url, cluster=CLUSTER, node_name=NODE)
        try:
            add = asyncio.create_task(
                run_shim(
                    daemon.socket_path,
                    "ADD",
                    "pod-kill",
                    netns_path,
                    pool=pool.name,
                    bridge=bridge_name,
                )
            )
            await asyncio.wait_for(proxy.held.wait(), 30)
            # The pod is wired and the lease pending when the daemon dies.
            assert link_exists(veth)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            output = await add
        finally:
            stop(process)

        assert output.exit_code != 0
        assert output.json["code"] == 11, output
        assert bound(ipamd, pool, "pod-kill") == []

        proxy.delays.clear()
        # In a thread: the proxy in this event loop serves the restarted daemon's requests.
        daemon, process = await asyncio.to_thread(
            start_node_daemon, daemon_dir, proxy.url, cluster=CLUSTER, node_name=NODE
        )
        try:
            # The restarted daemon undid the unfinished ADD before serving.
            assert not link_exists(veth)
            assert held(ipamd, pool, "pod-kill") == []

            retried = await run_shim(
                daemon.socket_path,
                "ADD",
                "pod-kill",
                netns_path,
                pool=pool.name,
                bridge=bridge_name,
            )
            assert retried.exit_code == 0, retried
            assert len(bound(ipamd, pool, "pod-kill")) == 1
        finally:
            stop(process)


async def test_del_with_ipamd_down_queues_release(
    in_process_node: Callable[..., Any],
    private_ipamd: tuple[Ipamd, Callable[[], None], Callable[[], None]],
    daemon_dir: Path,
    bridge_name: str,
    netns_path: str,
) -> None:
    server, stop_ipamd, start_ipamd_again = private_ipamd
    pool = make_pool(server)
    sock = await in_process_node(url=server.url, release_retry_interval=0.2)
    added = await run_shim(sock, "ADD", "pod-queue", netns_path, pool=pool.name, bridge=bridge_name)
    assert added.exit_code == 0, added

    stop_ipamd()
    deleted = await run_shim(
        sock, "DEL", "pod-queue", netns_path, pool=pool.name, bridge=bridge_name
    )

    assert (deleted.exit_code, deleted.stdout) == (0, ""), deleted
    assert not link_exists(host_veth_name("pod-queue", "eth0"))
    queue = daemon_dir / "state" / QUEUE_FILE
    (line,) = queue.read_text().splitlines()
    assert json.loads(line)["owner"]["containerID"] == "pod-queue"

    start_ipamd_again()
    await wait_until(lambda: held(server, pool, "pod-queue") == [], "the queued release")
    await wait_until(lambda: not queue.exists(), "the queue file to go")


async def test_queued_release_replayed_after_node_restart(
    daemon_dir: Path,
    private_ipamd: tuple[Ipamd, Callable[[], None], Callable[[], None]],
    bridge_name: str,
    netns_path: str,
) -> None:
    server, stop_ipamd, start_ipamd_again = private_ipamd
    pool = make_pool(server)
    first = await start_node(settings(daemon_dir, server.url))
    try:
        sock = daemon_dir / "node.sock"
        added = await run_shim(
            sock, "ADD", "pod-restart", netns_path, pool=pool.name, bridge=bridge_name
        )
        assert added.exit_code == 0, added
        stop_ipamd()
        deleted = await run_shim(
            sock, "DEL", "pod-restart", netns_path, pool=pool.name, bridge=bridge_name
        )
        assert deleted.exit_code == 0, deleted
    finally:
        await first.cleanup()

    start_ipamd_again()
    assert len(held(server, pool, "pod-restart")) == 1
    second = await start_node(settings(daemon_dir, server.url))
    try:
        await wait_until(lambda: held(server, pool, "pod-restart") == [], "the replayed release")
    finally:
        await second.cleanup()
    assert not (daemon_dir / "state" / QUEUE_FILE).exists()


async def test_queued_release_spares_newer_lease(
    in_process_node: Callable[..., Any],
    private_ipamd: tuple[Ipamd, Callable[[], None], Callable[[], None]],
    bridge_name: str,
    make_netns: Callable[[], str],
) -> None:
    server, stop_ipamd, start_ipamd_again = private_ipamd
    pool = make_pool(server)
    # A long interval: only the ADD itself replays the queue here.
    sock = await in_process_node(url=server.url, release_retry_interval=3600)
    first_netns = f"/run/netns/{make_netns()}"
    assert (
        await run_shim(sock, "ADD", "pod-again", first_netns, pool=pool.name, bridge=bridge_name)
    ).exit_code == 0
    stop_ipamd()
    assert (
        await run_shim(sock, "DEL", "pod-again", first_netns, pool=pool.name, bridge=bridge_name)
    ).exit_code == 0
    start_ipamd_again()

    second_netns = f"/run/netns/{make_netns()}"
    again = await run_shim(
        sock, "ADD", "pod-again", second_netns, pool=pool.name, bridge=bridge_name
    )

    assert again.exit_code == 0, again
    (lease,) = bound(server, pool, "pod-again")
    assert lease["address"] == again.json["ips"][0]["address"]


def test_parallel_adds_and_dels(network: Any, ipamd: Ipamd, make_netns: Callable[[], str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pods = [(f"pod-many{index}", f"/run/netns/{make_netns()}") for index in range(24)]

    with ThreadPoolExecutor(max_workers=len(pods)) as executor:
        added = list(executor.map(lambda pod: network.run("ADD", *pod), pods))
    assert [output.exit_code for output in added] == [0] * len(pods), added
    assert len({output.json["ips"][0]["address"] for output in added}) == len(pods)
    assert len(ipamd.leases(network.pool.name)) == len(pods)

    with ThreadPoolExecutor(max_workers=len(pods)) as executor:
        deleted = list(executor.map(lambda pod: network.run("DEL", *pod), pods))
    assert [output.exit_code for output in deleted] == [0] * len(pods), deleted
    assert ipamd.leases(network.pool.name) == []
    assert not any(link_exists(host_veth_name(pod, "eth0")) for pod, _ in pods)
    assert os.path.exists(f"/sys/class/net/{network.bridge}")
