"""ipvlan, bridge VLANs and SR-IOV on a kernel that has them, inside one VM boot."""

from __future__ import annotations

from typing import Any

import pytest

# The first test also waits for the VM's boot and its checks (about 80 s on 2 cores).
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


def test_sriov_vf_lifecycle(vm_results: dict[str, Any]) -> None:
    detail = assert_check(vm_results, "sriov")
    assert "vlan 100" in detail
    assert "is in use by container sriov-0 interface net1" in detail
    assert "bound to no driver" in detail
    assert "max_tx_rate 100Mbps" in detail
    assert "link state enable" in detail
