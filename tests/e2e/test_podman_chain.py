"""podman with a conflist that chains leasewire and the reference portmap and
tuning plugins: ``-p 127.0.0.1:HOSTPORT:PORT`` publishes a container port on
the host's loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Podman, StartAllInOne

pytestmark = [
    pytest.mark.root,
    pytest.mark.podman,
    pytest.mark.skipif(os.geteuid() != 0, reason="podman with CNI networks needs root"),
]

CNI_RESULTS_DIR = Path("/var/lib/cni/results")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fetch(url: str, seconds: float = 20.0) -> int:
    """Return the HTTP status of ``url``, retrying until the server answers."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def held_leases(url: str, pool: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{url}/v1/leases?pool={pool}", timeout=10) as response:
        body = json.load(response)
    leases = body["leases"] if isinstance(body, dict) else body
    return [lease for lease in leases if lease["state"] in ("pending", "bound")]


def test_podman_publishes_port_on_loopback(
    tmp_path: Path,
    podman: Podman,
    allinone_factory: StartAllInOne,
    busybox_rootfs: Path,
) -> None:
    suffix = secrets.token_hex(3)
    name = bridge = pool = f"lwt{suffix}"
    cidr = ipaddress.IPv4Network(f"10.252.{secrets.randbelow(256)}.0/24")
    socket_path = tmp_path / "node.sock"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "leasewire.cli",
            "install-cni",
            "--bin-dir",
            str(tmp_path / "bin"),
            "--conf-dir",
            str(tmp_path / "unused-net.d"),
            "--network",
            name,
            "--pool",
            pool,
            "--bridge",
            bridge,
            "--socket",
            str(socket_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    conflist = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "leasewire",
                "pool": pool,
                "driver": "bridge",
                "bridge": bridge,
                "socket": str(socket_path),
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
        ],
    }
    (podman.network_config_dir / f"10-{name}.conflist").write_text(json.dumps(conflist))
    daemon = allinone_factory(pool=pool, pool_cidr=str(cidr))
    host_port = free_port()

    try:
        podman.check(
            "run",
            "-d",
            "--name",
            f"web{suffix}",
            "--network",
            name,
            "-p",
            f"127.0.0.1:{host_port}:8080",
            "--rootfs",
            str(busybox_rootfs),
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/bin",
        )
        (lease,) = held_leases(daemon.ipamd_url, pool)
        assert ipaddress.ip_interface(str(lease["address"])).ip in cidr

        # busybox httpd lists nothing for a directory without index.html, but
        # any HTTP answer proves the DNAT from loopback reached the container.
        assert fetch(f"http://127.0.0.1:{host_port}/") in (200, 403, 404)

        podman.check("rm", "--force", "--time", "0", f"web{suffix}")
        assert held_leases(daemon.ipamd_url, pool) == []
    finally:
        podman.run("rm", "--all", "--force", "--time", "0")
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        for entry in CNI_RESULTS_DIR.glob(f"{name}-*"):
            entry.unlink(missing_ok=True)
