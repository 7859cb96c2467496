"""Fixtures for tests that wire real network namespaces through the real shim.

A session-wide ipamd subprocess (temporary SQLite file, free loopback port)
and a node daemon subprocess (temporary unix socket) serve every test. Each
test gets its own pool with a free 10.x.y.0/24, its own bridge name, and its
own network namespaces, all removed afterwards, even when the test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import leasewire.cni

REPO = Path(__file__).resolve().parents[2]
SHIM = Path(leasewire.cni.__file__).with_name("shim.py")
LEASEWIRE = Path(sys.executable).with_name("leasewire")
CLUSTER = "itest"
NODE = "itest-node"
STARTUP_SECONDS = 30.0


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} during start-up")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {STARTUP_SECONDS} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Ipamd:
    """A running ipamd subprocess and a tiny client for the checks in tests."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def leases(self, pool: str, state: str | None = None) -> list[dict[str, Any]]:
        query = f"pool={pool}" + (f"&state={state}" if state else "")
        status, payload = self.request("GET", f"/v1/leases?{query}")
        assert status == 200, payload
        if isinstance(payload, dict):
            payload = payload["leases"]
        assert isinstance(payload, list)
        return payload

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


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


def start_ipamd(directory: Path, port: int, *extra: str) -> tuple[Ipamd, subprocess.Popen[bytes]]:
    """Start ipamd on ``port`` with its SQLite file in ``directory`` and wait until it serves."""
    directory.mkdir(exist_ok=True)
    with (directory / "ipamd.log").open("ab") as log:
        process = subprocess.Popen(
            [
                str(LEASEWIRE),
                "ipamd",
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                f"sqlite+aiosqlite:///{directory}/ipamd.db",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Ipamd(f"http://127.0.0.1:{port}")
    try:
        wait_for(server.healthy, "ipamd", process)
    except BaseException:
        stop(process)
        raise
    return server, process


@pytest.fixture(scope="session")
def ipamd(session_dir: Path) -> Iterator[Ipamd]:
    server, process = start_ipamd(session_dir / "ipamd", free_port())
    try:
        yield server
    finally:
        stop(process)


@dataclass(frozen=True)
class NodeDaemon:
    socket_path: Path
    log_path: Path


def start_node_daemon(
    directory: Path, ipamd_url: str
) -> tuple[NodeDaemon, subprocess.Popen[bytes]]:
    socket_path = directory / "node.sock"
    log_path = directory / "node.log"
    # A socket file that a killed daemon left would look ready at once.
    socket_path.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(LEASEWIRE),
                "node",
                "--socket",
                str(socket_path),
                "--ipamd",
                ipamd_url,
                "--cluster",
                CLUSTER,
                "--node-name",
                NODE,
                "--state-dir",
                str(directory / "state"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for(socket_path.exists, "node daemon", process)
    return NodeDaemon(socket_path, log_path), process


@pytest.fixture(scope="session")
def node_daemon(session_dir: Path, ipamd: Ipamd) -> Iterator[NodeDaemon]:
    directory = session_dir / "node"
    directory.mkdir()
    daemon, process = start_node_daemon(directory, ipamd.url)
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
