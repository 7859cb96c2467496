"""Fixtures for end-to-end tests: a busybox root filesystem, a private podman,
the all-in-one daemon (``leasewire up``) as a subprocess, and ``install-cni``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

BUSYBOX = Path("/bin/busybox")
# Directories that podman and runc mount over or write into inside the rootfs.
ROOTFS_DIRS = ("bin", "proc", "sys", "dev", "etc", "tmp", "run")
# Podman's default ulimits for root containers (nofile 1048576, nproc 4194304)
# are above what some sandboxed machines grant, and runc then fails with
# "error setting rlimit". busybox needs far less.
CONTAINER_ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")
COMMAND_TIMEOUT = 120.0
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
HELD_STATES = ("pending", "bound")
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a root filesystem with only /bin/busybox, for ``podman run --rootfs``."""
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: install busybox-static (scripts/setup.sh does)")
    rootfs = tmp_path_factory.mktemp("rootfs")
    for name in ROOTFS_DIRS:
        (rootfs / name).mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    return rootfs


# ---- podman -------------------------------------------------------------------


@dataclass
class Podman:
    """A podman whose configuration, storage and CNI networks are all private.

    ``CONTAINERS_CONF`` replaces the system's containers.conf and its drop-ins,
    so the system's CNI networks and settings play no part.
    """

    conf_path: Path
    network_config_dir: Path
    root: Path
    runroot: Path

    def command(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a podman command and return its result without checking it."""
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf_path)}
        return subprocess.run(
            self.command(*args),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a podman command, fail the test with its output if it fails, return stdout."""
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args)} exited with {result.returncode}:\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result.stdout

    def remove_network_leftovers(self, network: str, bridge: str) -> None:
        """Remove every container, ``bridge`` and libcni's cached results of ``network``.

        Cleanup code calls it, so it never raises for what is already gone.
        """
        self.run("rm", "--all", "--force", "--time", "0")
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
        # libcni keeps each ADD result under /var/lib/cni/results until a DEL
        # succeeds; a failed test can leave entries for its network behind.
        for entry in CNI_RESULTS_DIR.glob(f"{network}-*"):
            entry.unlink(missing_ok=True)


def write_containers_conf(path: Path, *, network_config_dir: Path, plugin_dirs: list[Path]) -> None:
    plugin_dir_list = ", ".join(json.dumps(str(directory)) for directory in plugin_dirs)
    ulimit_list = ", ".join(json.dumps(limit) for limit in CONTAINER_ULIMITS)
    path.write_text(
        "[containers]\n"
        f"default_ulimits = [{ulimit_list}]\n"
        "\n"
        "[engine]\n"
        # crun rejects the hybrid cgroup layout of some machines, and runc does not.
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "\n"
        "[network]\n"
        'network_backend = "cni"\n'
        f"network_config_dir = {json.dumps(str(network_config_dir))}\n"
        f"cni_plugin_dirs = [{plugin_dir_list}]\n"
    )


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """Yield a private podman that loads CNI plugins from ``tmp_path/bin`` first."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: install it (scripts/setup.sh does)")
    base = tmp_path / "podman"
    network_config_dir = base / "net.d"
    network_config_dir.mkdir(parents=True)
    conf_path = base / "containers.conf"
    write_containers_conf(
        conf_path,
        network_config_dir=network_config_dir,
        plugin_dirs=[tmp_path / "bin", Path("/usr/lib/cni")],
    )
    # podman rejects a runroot path longer than 50 characters, and tmp_path is longer.
    runroot = Path(tempfile.mkdtemp(prefix="lwt", dir="/tmp"))
    instance = Podman(
        conf_path=conf_path,
        network_config_dir=network_config_dir,
        root=base / "root",
        runroot=runroot,
    )
    try:
        yield instance
    finally:
        # Removing the containers makes podman send DEL for each of them.
        instance.run("rm", "--all", "--force", "--time", "0")
        shutil.rmtree(runroot, ignore_errors=True)


# ---- the all-in-one daemon --------------------------------------------------


@dataclass
class AllInOne:
    """A running ``leasewire up``: ipamd on 127.0.0.1 and the node daemon's socket."""

    process: subprocess.Popen[bytes]
    ipamd_url: str
    socket_path: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get_json(self, path: str) -> object:
        """GET ``path`` from ipamd and return the decoded JSON body."""
        try:
            with urllib.request.urlopen(f"{self.ipamd_url}{path}", timeout=10) as response:
                return json.load(response)
        except urllib.error.URLError as error:
            status = self.process.poll()
            state = "running" if status is None else f"exited with {status}"
            pytest.fail(f"GET {self.ipamd_url}{path} failed ({error}); leasewire up is {state}")

    def held_leases(self, pool: str) -> list[dict[str, object]]:
        """Return the pending and bound leases of ``pool``."""
        body = self.get_json(f"/v1/leases?pool={pool}")
        # Older ipamd versions answer a bare list, newer ones {"leases": [...]}.
        leases = body["leases"] if isinstance(body, dict) else body
        assert isinstance(leases, list), f"unexpected GET /v1/leases body: {body!r}"
        return [lease for lease in leases if lease["state"] in HELD_STATES]


class StartAllInOne(Protocol):
    def __call__(self, *, pool: str, pool_cidr: str) -> AllInOne: ...


class InstallCni(Protocol):
    def __call__(
        self, *, bin_dir: Path, conf_dir: Path, network: str, pool: str, bridge: str, socket: Path
    ) -> None: ...


def _install_cni(
    *, bin_dir: Path, conf_dir: Path, network: str, pool: str, bridge: str, socket: Path
) -> None:
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "leasewire.cli",
            "install-cni",
            "--bin-dir",
            str(bin_dir),
            "--conf-dir",
            str(conf_dir),
            "--network",
            network,
            "--pool",
            pool,
            "--bridge",
            bridge,
            "--socket",
            str(socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr


@pytest.fixture
def install_cni() -> InstallCni:
    """Return a function that runs ``leasewire install-cni`` as a user does and checks it."""
    return _install_cni


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def allinone_factory(tmp_path: Path) -> Iterator[StartAllInOne]:
    """Yield a function that starts ``leasewire up`` and waits until it serves.

    Every daemon started through it is stopped (SIGTERM, then SIGKILL) at the end.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(*, pool: str, pool_cidr: str) -> AllInOne:
        state_dir = tmp_path / "state"
        socket_path = tmp_path / "node.sock"
        log_path = tmp_path / "up.log"
        ipamd_url = f"http://127.0.0.1:{free_port()}"
        leasewire = Path(sys.executable).with_name("leasewire")
        command = [
            str(leasewire),
            "--log-level",
            "info",
            "up",
            "--state-dir",
            str(state_dir),
            "--socket",
            str(socket_path),
            "--listen",
            ipamd_url.removeprefix("http://"),
            "--pool",
            pool,
            "--pool-cidr",
            pool_cidr,
        ]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        started.append(process)
        daemon = AllInOne(process, ipamd_url, socket_path, log_path)

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (socket_path.exists() and _healthy(ipamd_url)):
            if process.poll() is not None:
                pytest.fail(
                    f"leasewire up exited with {process.returncode} before it served:\n"
                    f"{daemon.log_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"leasewire up did not serve {ipamd_url}/healthz and {socket_path} "
                    f"within {STARTUP_TIMEOUT:g} s:\n{daemon.log_text()}"
                )
            time.sleep(0.1)
        return daemon

    try:
        yield start
    finally:
        for process in started:
            _stop(process)
