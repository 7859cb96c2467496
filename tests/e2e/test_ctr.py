"""``ctr run --cni`` (Debian's containerd 1.6, go-cni 1.1.7) wires a busybox
container through the installed leasewire shim, and its DEL, sent with an
empty CNI_NETNS, releases the lease.

ctr runs the CNI plugins itself, from /etc/cni/net.d and /opt/cni/bin only,
with no option to change them. The test therefore runs ctr in a private mount
namespace where temporary directories are bind-mounted over those two, so the
machine's own CNI files are neither read nor changed. containerd itself is a
private instance with its own root, state and socket.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import InstallCni, StartAllInOne

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd and CNI networks need root"),
]

STARTUP_SECONDS = 30.0


@pytest.fixture
def containerd() -> Iterator[Path]:
    """Start a private containerd and yield its socket path."""
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install containerd (scripts/setup.sh does)")
    # A short path: unix socket paths must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="lwt", dir="/tmp"))
    address = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{address}"\n'
        "[ttrpc]\n"
        f'  address = "{base / "ttrpc.sock"}"\n'
    )
    log = (base / "containerd.log").open("wb")
    process = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not address.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start:\n{(base / 'containerd.log').read_text()}")
            time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_ctr_run_cni_gets_lease_and_releases_it(
    tmp_path: Path,
    containerd: Path,
    allinone_factory: StartAllInOne,
    install_cni: InstallCni,
    busybox_rootfs: Path,
) -> None:
    suffix = secrets.token_hex(3)
    name = bridge = pool = f"lwt{suffix}"
    cidr = ipaddress.IPv4Network(f"10.251.{secrets.randbelow(256)}.0/24")
    bin_dir = tmp_path / "bin"
    conf_dir = tmp_path / "net.d"
    socket_path = tmp_path / "node.sock"
    install_cni(
        bin_dir=bin_dir,
        conf_dir=conf_dir,
        network=name,
        pool=pool,
        bridge=bridge,
        socket=socket_path,
    )
    daemon = allinone_factory(pool=pool, pool_cidr=str(cidr))
    container_id = f"lwt{suffix}"

    # ctr's go-cni reads only these two directories: mount ours over them in a
    # mount namespace of ctr alone.
    script = (
        "set -e; mount --make-rprivate /; "
        f"mount --bind {conf_dir} /etc/cni/net.d; "
        f"mount --bind {bin_dir} /opt/cni/bin; "
        f'exec ctr --address {containerd} run --rm --cni --rootfs "$0" {container_id} '
        "/bin/busybox ip -o -4 addr show dev eth0"
    )
    try:
        completed = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, str(busybox_rootfs)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed

        shown = completed.stdout
        address = shown.split(" inet ", 1)[1].split()[0]
        assert ipaddress.ip_interface(address).ip in cidr, shown
        # ctr's DEL came with an empty CNI_NETNS and still released the lease.
        assert daemon.held_leases(pool) == []
        log = daemon.log_text()
        assert f"default-{container_id}" in log
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
