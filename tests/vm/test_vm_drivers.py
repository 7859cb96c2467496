"""ipvlan, bridge VLANs, SR-IOV and an ipvlan pod through the shim on a kernel that has them,
inside one VM boot."""

from __future__ import annotations

import re
from typing import Any

import pytest

from leasewire.drivers.netlink import host_veth_name

# The first test also waits for the VM's boot and its checks (65 to 100 s on 2 cores).
pytestmark = pytest.mark.timeout(600)


def assert_check(results: dict[str, Any], name: str) -> str:
    assert name in results, f"the guest did not run check {name!r}: {sorted(results)}"
    result = results[name]
    assert result["ok"], f"check {name!r} failed in the VM:\n{result['detail']}"
    detail: str = result["detail"]
    return detail


def test_vm_kernel_modules(vm_results: dict[str, Any]) -> None:
    assert_check(vm_results, "modules")


@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_ipvlan_pods_talk(vm_results: dict[str, Any], mode: str) -> None:
    detail = assert_check(vm_results, f"ipvlan_{mode}")
    assert f"mode {mode} " in detail


def test_bridge_vlan_port(vm_results: dict[str, Any]) -> None:
    detail = assert_check(vm_results, "bridge_vlan")
    assert "10 PVID Egress Untagged" in detail


def test_bridge_check_vlan_moved(vm_results: dict[str, Any]) -> None:
    detail = assert_check(vm_results, "bridge_vlan")
    port = host_veth_name("vlan-0", "eth0")
    assert "CHECK after attach: passed" in detail
    assert (
        f"CHECK after the move: bridge port {port!r} has VLAN 20 (PVID, egress untagged), "
        "expected VLAN 10 (PVID, egress untagged) alone"
    ) in detail
    assert (
        "CHECK without VLAN filtering: bridge 'lwvb' has VLAN filtering off, "
        f"so its port {port!r} is not isolated in VLAN 10"
    ) in detail


def test_sriov_vf_lifecycle(vm_results: dict[str, Any]) -> None:
    detail = assert_check(vm_results, "sriov")
    assert "vlan 100" in detail
    assert "is in use by container sriov-0 interface net1" in detail
    assert "bound to no driver" in detail
    assert "max_tx_rate 100Mbps" in detail
    assert "link state enable" in detail


def test_shim_ipvlan_pod_lifecycle(vm_results: dict[str, Any]) -> None:
    detail = assert_check(vm_results, "shim_ipvlan")
    assert re.search(r"^ADD exit 0 in [0-9.]+ s: 10\.80\.0\.\d+/24$", detail, re.MULTILINE)
    assert "lease bound: 10.80.0." in detail
    assert "CHECK exit 0" in detail
    assert "DEL exit 0" in detail
    assert "eth0 gone" in detail
    assert "lease released: 10.80.0." in detail
