"""STATUS 51 for SR-IOV attachments: their PF must exist and be up.

The PF is found from a fake sysfs tree with the layout that the SR-IOV unit
tests use (``bus/pci/devices/<address>`` with ``physfn``, ``virtfnN`` and
``net/<name>``). The fake's limits: it contains plain directories and links, so
no kernel driver binds a device and no PCI device is real. Its ``net/``
entries do not follow network namespaces, and the PF it names is a veth pair
of this test, not a NIC with VFs. The node daemon checks links in its own
network namespace, so the veth pair lives in the root namespace, with a unique
name, and is removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasewire.api import LeaseState, Owner
from leasewire.cni.degraded import NeededLinks, link_problems, needed_links
from leasewire.cni.ipamclient import NodeLease

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create links")

PF_PCI = "0000:05:00.0"
VF_PCI = "0000:05:10.0"
VF_GONE = "0000:05:10.6"


def unique_name() -> str:
    return "lwt" + secrets.token_hex(4)


def make_sysfs(root: Path, pf: str) -> str:
    """Build a PF with network interface ``pf`` and one VF with a netdev; return the root."""
    devices = root / "bus" / "pci" / "devices"
    (devices / PF_PCI / "net" / pf).mkdir(parents=True)
    (devices / VF_PCI / "net" / f"{pf}v0").mkdir(parents=True)
    os.symlink(f"../{PF_PCI}", devices / VF_PCI / "physfn")
    os.symlink(f"../{VF_PCI}", devices / PF_PCI / "virtfn0")
    (root / "class" / "net" / pf).mkdir(parents=True)
    os.symlink(devices / PF_PCI, root / "class" / "net" / pf / "device")
    return str(root)


def sriov_lease(address: str, **options: object) -> NodeLease:
    return NodeLease(
        pool="p",
        address=address,
        state=LeaseState.BOUND,
        owner=Owner(cluster="c1", containerID="pod-sriov", ifname="net1"),
        driver="sriov",
        options=options,
    )


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pf_link() -> Iterator[str]:
    """One end of a veth pair, up, standing in for the PF."""
    name = unique_name()
    ip("link", "add", name, "type", "veth", "peer", "name", unique_name())
    ip("link", "set", name, "up")
    yield name
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def test_pf_from_device_id(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path, "ens5f0")
    needed = needed_links([sriov_lease("10.9.0.5/24", deviceID=VF_PCI, sysfsRoot=root)])
    assert needed.links == {"ens5f0": "SR-IOV PF"}
    assert needed.unresolved == []


def test_pf_named_directly() -> None:
    needed = needed_links([sriov_lease("10.9.0.5/24", pf="ens5f1")])
    assert needed.links == {"ens5f1": "SR-IOV PF"}


def test_device_id_wins_over_pf(tmp_path: Path) -> None:
    # The driver attaches the VF of deviceID when both are given, so its PF counts.
    root = make_sysfs(tmp_path, "ens5f0")
    lease = sriov_lease("10.9.0.5/24", deviceID=VF_PCI, pf="ens5f1", sysfsRoot=root)
    assert needed_links([lease]).links == {"ens5f0": "SR-IOV PF"}


def test_vf_gone_reported_once(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path, "ens5f0")
    leases = [
        sriov_lease("10.9.0.5/24", deviceID=VF_GONE, sysfsRoot=root),
        sriov_lease("fd00:9::5/64", deviceID=VF_GONE, sysfsRoot=root),
    ]
    needed = needed_links(leases)
    assert needed.links == {}
    assert len(needed.unresolved) == 1
    assert VF_GONE in needed.unresolved[0]
    assert "SR-IOV PF" in needed.unresolved[0]


def test_pf_without_netdev_reported(tmp_path: Path) -> None:
    # The PF's driver is unbound: sysfs shows no network interface under it.
    root = make_sysfs(tmp_path, "ens5f0")
    (tmp_path / "bus" / "pci" / "devices" / PF_PCI / "net" / "ens5f0").rmdir()
    needed = needed_links([sriov_lease("10.9.0.5/24", deviceID=VF_PCI, sysfsRoot=root)])
    assert needed.links == {}
    assert PF_PCI in needed.unresolved[0]


@pytest.mark.parametrize("options", [{"deviceID": "nonsense"}, {}, {"pf": "a/b"}])
def test_unusable_options_skipped(options: dict[str, object]) -> None:
    needed = needed_links([sriov_lease("10.9.0.5/24", **options)])
    assert needed == NeededLinks()


@ROOT_ONLY
async def test_pf_down_then_missing(tmp_path: Path, pf_link: str) -> None:
    root = make_sysfs(tmp_path, pf_link)
    needed = needed_links([sriov_lease("10.9.0.5/24", deviceID=VF_PCI, sysfsRoot=root)])
    assert await link_problems(needed) == []

    ip("link", "set", pf_link, "down")
    assert await link_problems(needed) == [f"SR-IOV PF {pf_link!r} is down"]

    ip("link", "del", pf_link)
    assert await link_problems(needed) == [f"SR-IOV PF {pf_link!r} does not exist"]


@ROOT_ONLY
async def test_problems_include_unresolved(tmp_path: Path, pf_link: str) -> None:
    root = make_sysfs(tmp_path, pf_link)
    leases = [
        sriov_lease("10.9.0.5/24", deviceID=VF_PCI, sysfsRoot=root),
        sriov_lease("10.9.0.6/24", deviceID=VF_GONE, sysfsRoot=root),
    ]
    problems = await link_problems(needed_links(leases))
    assert len(problems) == 1
    assert VF_GONE in problems[0]
