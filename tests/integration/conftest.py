"""Fixtures for tests that wire real network namespaces through the real shim.

A session-wide ipamd subprocess (temporary SQLite file, free loopback port)
and a node daemon subprocess (temporary unix socket) serve every test. Each
test gets its own pool with a free 10.x.y.0/24, its own bridge name, and its
own network namespaces, all removed afterwards, even when the test fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import leasewire.cni

from .daemons import Ipamd, NodeDaemon, free_port, start_ipamd, start_node_daemon, stop

REPO = Path(__file__).resolve().parents[2]
SHIM = Path(leasewire.cni.__file__).with_name("shim.py")
CLUSTER = "itest"
NODE = "itest-node"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root to create network namespaces and links")
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(skip)


def unique_name(prefix: str = "lwt") -> str:
    """Return a short random interface or netns name, unique per test run."""
    return prefix + secrets.token_hex(4)


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    """A private directory for the daemons' files.

    Not under pytest's basetemp: concurrent pytest runs on the same machine
    prune each other's older basetemp directories, sockets included.
    """
    directory = Path(tempfile.mkdtemp(prefix="lwt-"))
    yield directory
    if not os.environ.get("LEASEWIRE_KEEP_TEST_DIR"):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def ipamd(session_dir: Path) -> Iterator[Ipamd]:
    server, process = start_ipamd(session_dir / "ipamd", free_port())
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def node_daemon(session_dir: Path, ipamd: Ipamd) -> Iterator[NodeDaemon]:
    directory = session_dir / "node"
    directory.mkdir()
    daemon, process = start_node_daemon(directory, ipamd.url, cluster=CLUSTER, node_name=NODE)
    try:
        yield daemon
    finally:
        stop(process)


def _host_networks() -> list[ipaddress.IPv4Network]:
    output = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    networks = []
    for route in json.loads(output):
        dst = route.get("dst", "")
        if dst == "default":
            continue
        try:
            networks.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return networks


def free_cidr() -> ipaddress.IPv4Network:
    """Pick a random 10.x.y.0/24 that no route on the host overlaps."""
    taken = _host_networks()
    for _ in range(100):
        candidate = ipaddress.IPv4Network(
            f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"
        )
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 found for a test pool")


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


def release_pool(ipamd: Ipamd, name: str) -> None:
    """Release every lease of a pool and delete it."""
    for lease in ipamd.leases(name):
        owner = lease["owner"]
        ipamd.request(
            "DELETE",
            f"/v1/leases?cluster={owner['cluster']}&containerID={owner['containerID']}"
            f"&ifname={owner['ifname']}",
        )
    ipamd.request("DELETE", f"/v1/pools/{name}")


@pytest.fixture
def make_pool(ipamd: Ipamd) -> Iterator[Callable[..., Pool]]:
    """Return a function that creates a pool in a free 10.x.y.0/24 (or a /N inside one).

    Extra keyword arguments go into the pool spec. At the end every lease of
    these pools is released and the pools are deleted, so that owners and
    address ranges can be used again.
    """
    created: list[str] = []

    def create(prefix: int = 24, **spec: object) -> Pool:
        for _ in range(20):
            cidr = next(free_cidr().subnets(new_prefix=prefix))
            name = unique_name("pool-")
            gateway = cidr.network_address + 1
            body = {"name": name, "cidr": str(cidr), "gateway": str(gateway), **spec}
            status, payload = ipamd.request("POST", "/v1/pools", body)
            if status == 201:
                created.append(name)
                return Pool(name=name, cidr=cidr, gateway=gateway)
            assert payload.get("code") == "pool_overlap", payload
        raise AssertionError("no free CIDR for a test pool after 20 tries")

    yield create
    for name in created:
        release_pool(ipamd, name)


@pytest.fixture
def pool(make_pool: Callable[..., Pool]) -> Pool:
    return make_pool()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["-n", netns] if netns else []
    return ip(*prefix, "link", "show", "dev", name, check=False).returncode == 0


@pytest.fixture
def bridge() -> Iterator[str]:
    name = unique_name()
    yield name
    ip("link", "del", name, check=False)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Return a function that creates a netns and returns its name; all are deleted."""
    created: list[str] = []

    def create() -> str:
        name = unique_name()
        ip("netns", "add", name)
        created.append(name)
        return name

    yield create
    for name in created:
        ip("netns", "del", name, check=False)


@dataclass(frozen=True)
class ShimOutput:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


async def exec_shim(
    command: str,
    container_id: str,
    netns: str,
    config: Mapping[str, object],
    *,
    pod_name: str,
    cni_path: str = "/opt/cni/bin",
) -> ShimOutput:
    """Exec the real shim once without blocking the event loop, as a runtime does."""
    env = {
        "PATH": "/usr/bin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name}",
        "CNI_PATH": cni_path,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(SHIM),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(json.dumps(config).encode()), 60)
    assert process.returncode is not None
    return ShimOutput(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class Network:
    """Runs the real shim the way a runtime does, for one network configuration."""

    daemon: NodeDaemon
    pool: Pool
    bridge: str
    version: str = "1.0.0"

    def config(self, **extra: object) -> dict[str, object]:
        config: dict[str, object] = {
            "cniVersion": self.version,
            "name": "itestnet",
            "type": "leasewire",
            "pool": self.pool.name,
            "driver": "bridge",
            "bridge": self.bridge,
            "mtu": 1400,
            "socket": str(self.daemon.socket_path),
        }
        config.update(extra)
        return config

    def run(
        self,
        command: str,
        container_id: str,
        netns: str,
        ifname: str = "eth0",
        config: dict[str, object] | None = None,
        cni_args: str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod",
        env_changes: Mapping[str, str | None] | None = None,
    ) -> ShimOutput:
        """Run the shim; ``env_changes`` sets variables, or removes those mapped to None."""
        env: dict[str, str] = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": cni_args,
            "CNI_PATH": "/opt/cni/bin",
        }
        for name, value in (env_changes or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        completed = subprocess.run(
            [sys.executable, "-I", "-S", str(SHIM)],
            input=json.dumps(config if config is not None else self.config()),
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=90,
        )
        return ShimOutput(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def network(node_daemon: NodeDaemon, pool: Pool, bridge: str) -> Network:
    return Network(daemon=node_daemon, pool=pool, bridge=bridge)
