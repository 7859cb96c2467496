"""podman with a conflist that chains leasewire and the reference portmap and
tuning plugins: ``-p 127.0.0.1:HOSTPORT:PORT`` publishes a container port on
the host's loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import InstallCni, Podman, StartAllInOne

pytestmark = [
    pytest.mark.root,
    pytest.mark.podman,
    pytest.mark.skipif(os.geteuid() != 0, reason="podman with CNI networks needs root"),
]


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


def test_podman_publishes_port_on_loopback(
    tmp_path: Path,
    podman: Podman,
    allinone_factory: StartAllInOne,
    install_cni: InstallCni,
    busybox_rootfs: Path,
) -> None:
    suffix = secrets.token_hex(3)
    name = bridge = pool = f"lwt{suffix}"
    cidr = ipaddress.IPv4Network(f"10.252.{secrets.randbelow(256)}.0/24")
    socket_path = tmp_path / "node.sock"
    install_cni(
        bin_dir=tmp_path / "bin",
        conf_dir=tmp_path / "unused-net.d",
        network=name,
        pool=pool,
        bridge=bridge,
        socket=socket_path,
    )
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
        (lease,) = daemon.held_leases(pool)
        assert ipaddress.ip_interface(str(lease["address"])).ip in cidr

        # busybox httpd lists nothing for a directory without index.html, but
        # any HTTP answer proves the DNAT from loopback reached the container.
        assert fetch(f"http://127.0.0.1:{host_port}/") in (200, 403, 404)

        podman.check("rm", "--force", "--time", "0", f"web{suffix}")
        assert daemon.held_leases(pool) == []
    finally:
        podman.remove_network_leftovers(name, bridge)
