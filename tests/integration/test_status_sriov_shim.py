"""STATUS 51 through the real shim, node daemon and ipamd for an SR-IOV attachment
whose PF goes down.

This kernel has no SR-IOV, so no VF is attached: the lease is taken and
confirmed through ipamd's API with the driver and options that an SR-IOV
attach records. Its deviceID points into a fake sysfs tree (plain directories
and links, see tests/unit/test_status_sriov.py) whose PF interface is a veth
pair of this test in the root namespace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLUSTER, NODE, Network, ip, unique_name
from .daemons import Ipamd

PF_PCI = "0000:07:00.0"
VF_PCI = "0000:07:10.0"


def make_sysfs(root: Path, pf: str) -> str:
    devices = root / "bus" / "pci" / "devices"
    (devices / PF_PCI / "net" / pf).mkdir(parents=True)
    (devices / VF_PCI).mkdir(parents=True)
    os.symlink(f"../{PF_PCI}", devices / VF_PCI / "physfn")
    os.symlink(f"../{VF_PCI}", devices / PF_PCI / "virtfn0")
    return str(root)


@pytest.fixture
def pf_link() -> Iterator[str]:
    name = unique_name()
    ip("link", "add", name, "type", "veth", "peer", "name", unique_name())
    ip("link", "set", name, "up")
    yield name
    ip("link", "del", name, check=False)


def test_status_sriov_pf_down(network: Network, ipamd: Ipamd, pf_link: str, tmp_path: Path) -> None:
    network.version = "1.1.0"
    config = network.config(name=unique_name("sriovnet"), driver="sriov")
    owner = {"cluster": CLUSTER, "containerID": "pod-deg-sriov", "ifname": "net1"}
    lease = {"pool": network.pool.name, "owner": owner, "node": NODE, "network": config["name"]}
    status, answer = ipamd.request("POST", "/v1/leases", lease)
    assert status == 201, answer
    options = {"deviceID": VF_PCI, "sysfsRoot": make_sysfs(tmp_path / "sys", pf_link)}
    status, answer = ipamd.request(
        "POST", "/v1/leases/confirm", {"owner": owner, "driver": "sriov", "options": options}
    )
    assert status == 200, answer

    healthy = network.run("STATUS", "", "", config=config)
    ip("link", "set", pf_link, "down")
    down = network.run("STATUS", "", "", config=config)

    assert (healthy.exit_code, healthy.stdout) == (0, ""), healthy
    assert down.exit_code != 0
    assert down.json["code"] == 51
    assert f"SR-IOV PF {pf_link!r} is down" in down.json["msg"]
