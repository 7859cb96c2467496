"""Leases of deleted pods and nodes go back to ipamd; leases of live pods never do."""

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
PODS_PATH = "/api/v1/namespaces/default/pods"


def pod(name: str, uid: str, node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"nodeName": node},
    }


async def make_pool(kube: KubeApi, name: str, cidr: str) -> None:
    body = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr},
    }
    await kube.request("POST", POOLS_PATH, body)
    await kube.wait(lambda: kube.condition(POOLS, name, "Ready").get("status") == "True", "Ready")


async def held_uids(ipamd: Ipamd, pool: str) -> set[str]:
    return {lease["pod"]["uid"] for lease in await ipamd.held_leases(pool)}


async def test_deleted_pod_lease_released(kube: KubeApi, ipamd: Ipamd) -> None:
    await make_pool(kube, "pods", "10.81.0.0/24")
    await kube.request("POST", PODS_PATH, pod("api-1", "uid-api-1"))
    await kube.request("POST", PODS_PATH, pod("api-2", "uid-api-2"))
    await ipamd.lease("pods", uid="uid-api-1", name="api-1")
    await ipamd.lease("pods", uid="uid-api-2", name="api-2")

    await kube.request("DELETE", f"{PODS_PATH}/api-1")

    async def released() -> bool:
        return await held_uids(ipamd, "pods") == {"uid-api-2"}

    await kube.wait(released, "the deleted pod's lease to be released")


async def test_stale_lease_released_by_reconciliation(kube: KubeApi, ipamd: Ipamd) -> None:
    await make_pool(kube, "stale", "10.82.0.0/24")
    # A lease whose pod never existed in this API server: its deletion event was missed.
    await ipamd.lease("stale", uid="uid-gone", name="gone-0")
    await kube.request("POST", PODS_PATH, pod("alive-0", "uid-alive"))
    await ipamd.lease("stale", uid="uid-alive", name="alive-0")

    async def released() -> bool:
        return await held_uids(ipamd, "stale") == {"uid-alive"}

    await kube.wait(released, "the stale lease to be released")


async def test_statefulset_pod_keeps_new_lease(kube: KubeApi, ipamd: Ipamd) -> None:
    await make_pool(kube, "sts", "10.83.0.0/24")
    # web-0 was replaced while the operator missed the deletion: same name, new UID.
    await ipamd.lease("sts", uid="uid-web0-old", name="web-0")
    await kube.request("POST", PODS_PATH, pod("web-0", "uid-web0-new"))
    await ipamd.lease("sts", uid="uid-web0-new", name="web-0")

    async def stale_released() -> bool:
        return await held_uids(ipamd, "sts") == {"uid-web0-new"}

    await kube.wait(stale_released, "the old web-0 lease to be released")
    await asyncio.sleep(1.0)
    assert await held_uids(ipamd, "sts") == {"uid-web0-new"}


async def test_lease_created_during_listing_survives(kube: KubeApi, ipamd: Ipamd) -> None:
    listing_started = asyncio.Event()
    lease_made = asyncio.Event()

    async def pod_list(request: kmocklib.Request) -> dict[str, Any]:
        # The reconciliation pages its listings; Kopf's own listing does not.
        if "limit" in request.params and not lease_made.is_set():
            listing_started.set()
            await lease_made.wait()
        items = [
            obj.raw
            for (resource, _, _), obj in kube.emulator.objects.items()
            if resource == kmocklib.resource("v1/pods") and not obj.deleted
        ]
        return {
            "metadata": {"resourceVersion": str(kube.emulator.resource_version)},
            "items": items,
        }

    kube.emulator["list", kmocklib.resource("v1/pods")] << pod_list
    await make_pool(kube, "racy", "10.84.0.0/24")

    await asyncio.wait_for(listing_started.wait(), 10)
    # A pod is wired while the listing runs: its lease exists, the listing misses the pod.
    await ipamd.lease("racy", uid="uid-new", name="new-0")
    await kube.request("POST", PODS_PATH, pod("new-0", "uid-new"))
    lease_made.set()

    # Several passes, each longer than the grace period, all keep the lease.
    await asyncio.sleep(2.0)
    assert await held_uids(ipamd, "racy") == {"uid-new"}


async def test_deleted_node_leases_released(kube: KubeApi, ipamd: Ipamd) -> None:
    await make_pool(kube, "nodes", "10.85.0.0/24")
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-b", "labels": {"zone": "z1"}},
    }
    await kube.request("POST", "/api/v1/nodes", node)
    await kube.request("POST", PODS_PATH, pod("on-b", "uid-on-b", node="node-b"))
    await kube.request("POST", PODS_PATH, pod("on-a", "uid-on-a", node="node-a"))
    await ipamd.lease("nodes", uid="uid-on-b", name="on-b", node="node-b")
    await ipamd.lease("nodes", uid="uid-on-a", name="on-a", node="node-a")

    await kube.request("DELETE", "/api/v1/nodes/node-b")

    async def released() -> bool:
        return await held_uids(ipamd, "nodes") == {"uid-on-a"}

    await kube.wait(released, "the deleted node's lease to be released")
