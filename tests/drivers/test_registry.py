"""A third-party driver package, installed with pip, that the node daemon loads by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasewire.drivers.registry import UnknownDriverError, available_drivers, load_driver_class

from .conftest import ROOT_ONLY, Namespaces, ping, unique_name
from .stack import Stack, install_fixture_driver


def test_builtin_drivers_registered() -> None:
    assert {"bridge", "macvlan", "ipvlan", "sriov"} <= set(available_drivers())
    assert load_driver_class("macvlan").name == "macvlan"


def test_unknown_driver_names_installed() -> None:
    with pytest.raises(UnknownDriverError, match=r"installed drivers: .*bridge"):
        load_driver_class("no-such-driver")


@pytest.fixture(scope="module")
def marker_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the fixture package into a directory of its own with pip, as a user would."""
    return install_fixture_driver("marker-driver", tmp_path_factory.mktemp("marker-driver"))


def test_installed_package_registers_driver(marker_site: Path) -> None:
    code = (
        "from leasewire.drivers.registry import load_driver_class;"
        "print(load_driver_class('marker').__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(marker_site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "lw_marker_driver"


@pytest.fixture
def marker_stack(marker_site: Path) -> Iterator[Stack]:
    directory = Path(tempfile.mkdtemp(prefix="lwt-registry-"))
    stack = Stack.start(directory, "registry-node", env={"PYTHONPATH": str(marker_site)})
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)


@ROOT_ONLY
def test_node_daemon_uses_third_party_driver(marker_stack: Stack, spaces: Namespaces) -> None:
    pool = unique_name("pool-")
    status, payload = marker_stack.ipamd.request(
        "POST", "/v1/pools", {"name": pool, "cidr": "10.215.9.0/24", "gateway": "10.215.9.1"}
    )
    assert status == 201, payload
    notes = marker_stack.directory / "notes.jsonl"
    bridge = spaces.host_link(unique_name("lwtb"))
    config: dict[str, object] = {
        "cniVersion": "1.0.0",
        "name": "registrynet",
        "type": "leasewire",
        "pool": pool,
        "driver": "marker",
        "bridge": bridge,
        "notes": str(notes),
    }
    netns = spaces.netns()

    code, stdout = marker_stack.shim("ADD", config, "registry-pod", netns, "eth0")
    assert code == 0, stdout + marker_stack.log()
    result = json.loads(stdout)
    assert ping(netns, "10.215.9.1")
    assert result["ips"][0]["address"].startswith("10.215.9.")

    code, stdout = marker_stack.shim("DEL", config, "registry-pod", netns, "eth0")
    assert code == 0, stdout
    verbs = [json.loads(line)["verb"] for line in notes.read_text().splitlines()]
    assert verbs == ["attach", "detach"]
    assert "Loaded attach driver 'marker'" in marker_stack.log()
