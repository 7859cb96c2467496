"""The quickstart's demo, run as a user runs it: install-cni, then leasewire demo."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _leasewire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leasewire.cli", *args], capture_output=True, text=True, timeout=180
    )


def _bridge_ports(bridge: str) -> list[str]:
    output = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in output.splitlines()]


def _demo_netns() -> set[str]:
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return {name for name in names if name.startswith("lwdemo-")}


def test_demo_wires_pods_and_leaves_nothing(tmp_path: Path) -> None:
    bridge = f"lwt{secrets.token_hex(3)}"
    bin_dir, conf_dir, state_dir = tmp_path / "bin", tmp_path / "net.d", tmp_path / "state"
    installed = _leasewire(
        "install-cni",
        "--bin-dir",
        str(bin_dir),
        "--conf-dir",
        str(conf_dir),
        "--network",
        "demotest",
        "--pool",
        "demotest",
        "--bridge",
        bridge,
        "--socket",
        str(tmp_path / "node.sock"),
    )
    assert installed.returncode == 0, installed.stderr
    # Other tests may create and remove namespaces at the same time, so only
    # the demo's own namespaces and the test bridge's ports are compared.
    netns_before = _demo_netns()

    try:
        demo = _leasewire(
            "demo",
            "--pods",
            "3",
            "--bin-dir",
            str(bin_dir),
            "--conf-dir",
            str(conf_dir),
            "--state-dir",
            str(state_dir),
            "--socket",
            str(tmp_path / "node.sock"),
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--pool-cidr",
            "10.251.7.0/24",
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "10.251.7." in demo.stdout
        # Each of 3 pods pings the other 2, and the node pings all 3.
        assert "9 pings answered" in demo.stdout
        assert "0 allocated" in demo.stdout
        assert _demo_netns() == netns_before
        assert _bridge_ports(bridge) == []
        # The bridge did not exist before, so the demo removed it too.
        bridge_left = subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True)
        assert bridge_left.returncode != 0
        # The demo stopped the daemon it started.
        log = (state_dir / "up.log").read_text()
        assert "stopping" in log
    finally:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def test_demo_without_conflist_names_the_step(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "leasewire"
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    demo = _leasewire(
        "demo", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "none")
    )
    assert demo.returncode == 1
    assert "find the network" in demo.stderr
    assert "install-cni" in demo.stderr
