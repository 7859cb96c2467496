"""ipamd and the node daemon as subprocesses, for tests that go through the real shim.

Both daemons keep their files in the directory they are given: ipamd its
SQLite database and ``ipamd.log``, the node daemon ``node.sock``, ``node.log``
and its state directory. ipamd listens on a loopback port. The integration
fixtures and the driver tests' ``Stack`` start them through this module
(``tests/drivers`` imports it as ``integration.daemons``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEASEWIRE = Path(sys.executable).with_name("leasewire")
STARTUP_SECONDS = 30.0


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


def spawn(
    log_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``leasewire *args`` with its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(LEASEWIRE), *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )


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


def start_ipamd(
    directory: Path, port: int, *extra: str, env: Mapping[str, str] | None = None
) -> tuple[Ipamd, subprocess.Popen[bytes]]:
    """Start ipamd on ``port`` with its SQLite file in ``directory`` and wait until it serves."""
    directory.mkdir(exist_ok=True)
    process = spawn(
        directory / "ipamd.log",
        "ipamd",
        "--listen",
        f"127.0.0.1:{port}",
        "--database",
        f"sqlite+aiosqlite:///{directory}/ipamd.db",
        *extra,
        env=env,
    )
    server = Ipamd(f"http://127.0.0.1:{port}")
    try:
        wait_for(server.healthy, "ipamd", process)
    except BaseException:
        stop(process)
        raise
    return server, process


@dataclass(frozen=True)
class NodeDaemon:
    socket_path: Path
    log_path: Path


def start_node_daemon(
    directory: Path,
    ipamd_url: str,
    *,
    cluster: str,
    node_name: str,
    env: Mapping[str, str] | None = None,
) -> tuple[NodeDaemon, subprocess.Popen[bytes]]:
    """Start a node daemon with its socket in ``directory`` and wait until the socket exists."""
    socket_path = directory / "node.sock"
    log_path = directory / "node.log"
    # A socket file that a killed daemon left would look ready at once.
    socket_path.unlink(missing_ok=True)
    process = spawn(
        log_path,
        "node",
        "--socket",
        str(socket_path),
        "--ipamd",
        ipamd_url,
        "--cluster",
        cluster,
        "--node-name",
        node_name,
        "--state-dir",
        str(directory / "state"),
        env=env,
    )
    try:
        wait_for(socket_path.exists, "node daemon", process)
    except BaseException:
        stop(process)
        raise
    return NodeDaemon(socket_path, log_path), process


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def install_fixture_driver(name: str, work: Path) -> Path:
    """Install the driver package tests/fixtures/``name`` with pip into a new directory under
    ``work``, as a user would; return that directory, for PYTHONPATH."""
    source = work / f"{name}-source"
    # A copy, so the build leaves nothing in the repository.
    shutil.copytree(FIXTURES / name, source)
    target = work / f"{name}-site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            # Offline: the build uses the setuptools of the project's venv, so
            # the test sends nothing to a package index.
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target
