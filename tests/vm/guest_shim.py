"""The whole path of one ipvlan (l2) pod inside the test VM: the installed shim, run
by a libcni-like runtime, a node daemon and ipamd (SQLite, on 127.0.0.1 in the VM)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from leasewire.cni.install import shim_text
from tests.integration import daemons
from tests.integration.cniharness import Attachment, CniHarness
from tests.integration.daemons import Ipamd, free_port, start_ipamd, start_node_daemon, stop
from tests.vm.guest_common import CheckError, expect, netns, sh

CLUSTER = "vm"
NODE = "vm-node"
POOL = "shimpool"
POOL_CIDR = "10.80.0.0/24"
MASTER = "lwmshim"
CONTAINER = "shim-ipvlan-0"
# How long each daemon may take to start serving, in seconds. The helpers'
# default of 30 s is too short inside the VM, as start_daemons_early explains.
STARTUP_SECONDS = 240.0


@dataclass(frozen=True)
class Daemons:
    """ipamd and the node daemon, running with their files in ``work``."""

    work: Path
    ipamd: Ipamd
    socket_path: Path
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


async def start_daemons(work: Path) -> Daemons:
    """Start ipamd and the node daemon side by side and wait until both serve."""
    port = free_port()
    ipamd_started, node_started = await asyncio.gather(
        asyncio.to_thread(start_ipamd, work, port),
        asyncio.to_thread(
            start_node_daemon,
            work,
            f"http://127.0.0.1:{port}",
            cluster=CLUSTER,
            node_name=NODE,
        ),
        return_exceptions=True,
    )
    outcomes = (ipamd_started, node_started)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        for outcome in outcomes:
            if not isinstance(outcome, BaseException):
                stop(outcome[1])
        raise CheckError(f"{failures[0]}\n{daemon_logs(work)}") from failures[0]
    assert not isinstance(ipamd_started, BaseException)
    assert not isinstance(node_started, BaseException)
    processes = [ipamd_started[1], node_started[1]]
    return Daemons(work, ipamd_started[0], node_started[0].socket_path, processes)


def start_daemons_early() -> asyncio.Task[Daemons]:
    """Start the daemons now, so that they start while the other checks run.

    Started alone in the VM (QEMU's emulation, 2 cores), they took 48 s to
    serve. A bare import of SQLAlchemy, aiohttp, pydantic and Alembic took as
    long, two thirds of it system time, so the file reads over the host share
    are the likely cost.
    """
    daemons.STARTUP_SECONDS = STARTUP_SECONDS
    work = Path(tempfile.mkdtemp(prefix="lwshim-"))
    return asyncio.create_task(start_daemons(work))


def daemon_logs(directory: Path) -> str:
    parts = []
    for name in ("ipamd.log", "node.log"):
        path = directory / name
        if path.exists():
            parts.append(f"--- {name} (end):\n{path.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def pod_link(netns_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-d", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    )


def run_pod(work: Path, ipamd: Ipamd, socket_path: Path, netns_path: str) -> list[str]:
    """Run ADD, CHECK and DEL of one pod through the installed shim and return what each showed."""
    notes: list[str] = []
    status, payload = ipamd.request("POST", "/v1/pools", {"name": POOL, "cidr": POOL_CIDR})
    expect(status == 201, f"creating pool {POOL} failed with HTTP {status}: {payload}")

    # Installed as install-cni does, behind the venv's python -IS.
    bin_dir = work / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "leasewire"
    shim.write_text(shim_text(sys.executable))
    shim.chmod(0o755)
    plugin: dict[str, object] = {
        "type": "leasewire",
        "socket": str(socket_path),
        "pool": POOL,
        "driver": "ipvlan",
        "master": MASTER,
        "mode": "l2",
    }
    runtime = CniHarness(
        conflist={"cniVersion": "1.0.0", "name": "vmnet", "plugins": [plugin]},
        bin_dirs=[bin_dir],
        cache_dir=work / "cache",
    )
    attachment = Attachment(container_id=CONTAINER, netns=netns_path, ifname="eth0")

    started = time.monotonic()
    result = runtime.add(attachment)
    address = str(result["ips"][0]["address"])
    notes.append(f"ADD exit 0 in {time.monotonic() - started:.2f} s: {address}")
    expect(address.startswith("10.80.0."), f"ADD returned {address}, not one of pool {POOL}")
    link = pod_link(netns_path)
    expect(link.returncode == 0, f"the pod has no eth0 after ADD: {link.stderr}")
    expect(f"inet {address} " in link.stdout, link.stdout)
    expect("ipvlan" in link.stdout and "mode l2 " in link.stdout, link.stdout)
    bound = ipamd.leases(POOL, "bound")
    expect([lease["address"] for lease in bound] == [address], f"bound leases: {bound}")
    notes.append(f"lease bound: {address}")

    # The harness raises CniCallError on a non-zero exit, with the shim's error object.
    runtime.check(attachment)
    notes.append("CHECK exit 0")

    runtime.delete(attachment)
    notes.append("DEL exit 0")
    link = pod_link(netns_path)
    expect(link.returncode != 0, f"eth0 is still in the pod after DEL:\n{link.stdout}")
    notes.append("eth0 gone")
    expect(ipamd.leases(POOL, "bound") == [], "a lease is still bound after DEL")
    released = [lease["address"] for lease in ipamd.leases(POOL, "released")]
    expect(released == [address], f"released leases after DEL: {released}")
    notes.append(f"lease released: {address}")
    return notes


async def check_shim_ipvlan(starting: asyncio.Task[Daemons]) -> str:
    sh("ip", "link", "add", MASTER, "type", "veth", "peer", "name", f"{MASTER}p")
    sh("ip", "link", "set", MASTER, "up")
    sh("ip", "link", "set", f"{MASTER}p", "up")
    pod = netns("shimpod")

    waited = time.monotonic()
    running = await starting
    notes = [f"waited {time.monotonic() - waited:.1f} s for ipamd and the node daemon"]
    try:
        notes.extend(run_pod(running.work, running.ipamd, running.socket_path, pod))
    except Exception as error:
        raise CheckError(f"{error}\n{daemon_logs(running.work)}") from error
    finally:
        running.stop()
        shutil.rmtree(running.work, ignore_errors=True)
    return "\n".join(notes)
