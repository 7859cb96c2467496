"""IPPool resources against a real ipamd: create, update, refusal, counts, deletion."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import kmock as kmocklib
import pytest

if TYPE_CHECKING:
    from .operator_harness import Ipamd, KubeApi

pytest_plugins = ("k8s_operator.operator_harness",)
pytestmark = pytest.mark.usefixtures("operator")

POOLS = "leasewire.io/v1alpha1/ippools"
POOLS_PATH = "/apis/leasewire.io/v1alpha1/ippools"


def ippool(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name, "generation": 1, "uid": f"uid-{name}"},
        "spec": {"cidr": cidr, **spec},
    }


async def test_pool_create_reaches_ipamd(kube: KubeApi, ipamd: Ipamd) -> None:
    await kube.request("POST", POOLS_PATH, ippool("blue", "10.71.0.0/24", gateway="10.71.0.1"))

    await kube.wait(lambda: kube.condition(POOLS, "blue", "Ready").get("status") == "True", "Ready")
    status, pool = await ipamd.call("GET", "/v1/pools/blue")
    assert status == 200
    assert pool["cidr"] == "10.71.0.0/24"
    assert pool["gateway"] == "10.71.0.1"
    assert pool["cluster"] == "optest"

    body = kube.get(POOLS, "blue")
    assert body is not None
    assert body["status"]["total"] == pool["size"]
    assert body["status"]["free"] == pool["size"]
    assert body["status"]["allocated"] == 0
    assert body["status"]["observedGeneration"] == 1
    assert kube.condition(POOLS, "blue", "Synced")["reason"] == "Applied"
    assert "leasewire.io/operator" in body["metadata"]["finalizers"]


async def test_pool_update_changes_ipamd(kube: KubeApi, ipamd: Ipamd) -> None:
    await kube.request("POST", POOLS_PATH, ippool("green", "10.72.0.0/24"))
    await kube.wait(
        lambda: kube.condition(POOLS, "green", "Ready").get("status") == "True", "Ready"
    )

    await kube.request(
        "PATCH", f"{POOLS_PATH}/green", {"spec": {"priority": 7, "exclude": ["10.72.0.9"]}}
    )

    async def updated() -> bool:
        _, pool = await ipamd.call("GET", "/v1/pools/green")
        return bool(pool["priority"] == 7)

    await kube.wait(updated, "the new priority in ipamd")
    _, pool = await ipamd.call("GET", "/v1/pools/green")
    assert pool["exclude"] == ["10.72.0.9"]
    await kube.wait(
        lambda: (kube.get(POOLS, "green") or {}).get("status", {}).get("observedGeneration") == 2,
        "observedGeneration 2",
    )


async def test_pool_refusal_sets_ready_false(kube: KubeApi, ipamd: Ipamd) -> None:
    await kube.request("POST", POOLS_PATH, ippool("first", "10.73.0.0/24"))
    await kube.wait(
        lambda: kube.condition(POOLS, "first", "Ready").get("status") == "True", "Ready"
    )

    # Overlaps the first pool: ipamd refuses it, and the operator must not retry.
    await kube.request("POST", POOLS_PATH, ippool("second", "10.73.0.128/25"))
    await kube.wait(
        lambda: kube.condition(POOLS, "second", "Ready").get("status") == "False", "Ready=False"
    )
    ready = kube.condition(POOLS, "second", "Ready")
    assert "10.73.0" in ready["message"]
    assert ready["reason"] != "IpamdUnavailable"
    status, _ = await ipamd.call("GET", "/v1/pools/second")
    assert status == 404

    patches = kube.emulator["patch", kmocklib.name("second")]
    patches_before = len(patches)
    assert patches_before > 0
    await asyncio.sleep(1.0)
    assert len(patches) == patches_before, "the refused pool was handled again unchanged"

    # A spec change that fixes the overlap is applied.
    await kube.request("PATCH", f"{POOLS_PATH}/second", {"spec": {"cidr": "10.74.0.0/24"}})
    await kube.wait(
        lambda: kube.condition(POOLS, "second", "Ready").get("status") == "True", "Ready after fix"
    )


async def test_pool_counts_follow_leases(kube: KubeApi, ipamd: Ipamd) -> None:
    await kube.request("POST", POOLS_PATH, ippool("counted", "10.75.0.0/29"))
    await kube.wait(
        lambda: kube.condition(POOLS, "counted", "Ready").get("status") == "True", "Ready"
    )
    # Pods that exist, so that the reconciliation keeps their leases.
    for index in range(2):
        await kube.request(
            "POST", "/api/v1/namespaces/default/pods", pod(f"p{index}", f"uid-c{index}")
        )
        await ipamd.lease("counted", uid=f"uid-c{index}", name=f"p{index}")

    await kube.wait(
        lambda: (kube.get(POOLS, "counted") or {}).get("status", {}).get("allocated") == 2,
        "allocated 2 in the status",
    )
    status = (kube.get(POOLS, "counted") or {})["status"]
    assert status["free"] == status["total"] - 2


async def test_pool_delete_waits_for_leases(kube: KubeApi, ipamd: Ipamd) -> None:
    await kube.request("POST", POOLS_PATH, ippool("held", "10.76.0.0/24"))
    await kube.wait(lambda: kube.condition(POOLS, "held", "Ready").get("status") == "True", "Ready")
    await kube.request("POST", "/api/v1/namespaces/default/pods", pod("web-0", "uid-h0"))
    await ipamd.lease("held", uid="uid-h0", name="web-0")

    await kube.request("DELETE", f"{POOLS_PATH}/held")
    await kube.wait(
        lambda: kube.condition(POOLS, "held", "Ready").get("reason") == "PoolInUse", "PoolInUse"
    )
    body = kube.get(POOLS, "held")
    assert body is not None, "the finalizer must hold the pool while a lease remains"
    assert "default/web-0" in kube.condition(POOLS, "held", "Ready")["message"]
    assert body["status"]["holders"][0]["uid"] == "uid-h0"

    # The pod goes away: the operator releases its lease, then the deletion completes.
    await kube.request("DELETE", "/api/v1/namespaces/default/pods/web-0")
    await kube.wait(lambda: kube.get(POOLS, "held") is None, "the pool's deletion")
    status, _ = await ipamd.call("GET", "/v1/pools/held")
    assert status == 404


def pod(name: str, uid: str, namespace: str = "default", node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"nodeName": node},
    }
