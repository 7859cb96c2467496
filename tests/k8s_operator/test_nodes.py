"""Node labels reach ipamd and follow their changes; a deleted node is forgotten after a grace."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .operator_harness import Ipamd, KubeApi

pytest_plugins = ("k8s_operator.operator_harness",)
pytestmark = pytest.mark.usefixtures("operator")

NODES_PATH = "/api/v1/nodes"
POOLS = "leasewire.io/v1alpha1/ippools"
POOLS_PATH = "/apis/leasewire.io/v1alpha1/ippools"


async def ipamd_labels(ipamd: Ipamd) -> dict[str, dict[str, str]]:
    """Labels per node that ipamd holds for the test's cluster."""
    status, nodes = await ipamd.call("GET", "/v1/nodes", params={"cluster": "optest"})
    assert status == 200, nodes
    return {node["name"]: node["labels"] for node in nodes}


async def test_node_labels_follow_changes(kube: KubeApi, ipamd: Ipamd) -> None:
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "worker-1", "labels": {"zone": "z1", "tier": "metal"}},
    }
    await kube.request("POST", NODES_PATH, node)

    async def labels_are(expected: dict[str, str]) -> bool:
        return (await ipamd_labels(ipamd)).get("worker-1") == expected

    await kube.wait(lambda: labels_are({"zone": "z1", "tier": "metal"}), "the node's labels")

    # A label changes, another one is added.
    await kube.request(
        "PATCH", f"{NODES_PATH}/worker-1", {"metadata": {"labels": {"zone": "z2", "gpu": "a10"}}}
    )
    await kube.wait(
        lambda: labels_are({"zone": "z2", "tier": "metal", "gpu": "a10"}), "the changed labels"
    )

    # A status-only update, as kubelets send every few seconds, sends nothing to ipamd.
    puts = ipamd.seen_from("", "PUT", "/v1/nodes/worker-1")
    await kube.request("PATCH", f"{NODES_PATH}/worker-1", {"status": {"phase": "Running"}})
    await asyncio.sleep(0.5)
    assert ipamd.seen_from("", "PUT", "/v1/nodes/worker-1") == puts

    # Deleted, then forgotten by ipamd once the grace period is over.
    await kube.request("DELETE", f"{NODES_PATH}/worker-1")

    async def forgotten() -> bool:
        return "worker-1" not in await ipamd_labels(ipamd)

    await kube.wait(forgotten, "ipamd to forget the deleted node")


async def test_node_back_within_grace_is_kept(kube: KubeApi, ipamd: Ipamd) -> None:
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "worker-2", "labels": {"zone": "z1"}},
    }
    pool = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "w2"},
        "spec": {"cidr": "10.93.0.0/24"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "w2-0", "namespace": "default", "uid": "uid-w2"},
        "spec": {"nodeName": "worker-2"},
    }
    await kube.request("POST", NODES_PATH, node)
    await kube.wait(
        lambda: _has_node(ipamd, "worker-2", {"zone": "z1"}), "the node's labels in ipamd"
    )
    await kube.request("POST", POOLS_PATH, pool)
    await kube.wait(lambda: kube.condition(POOLS, "w2", "Ready").get("status") == "True", "Ready")
    await kube.request("POST", "/api/v1/namespaces/default/pods", pod)
    await ipamd.lease("w2", uid="uid-w2", name="w2-0", node="worker-2")

    # The node object is deleted and registered again within the grace period.
    await kube.request("DELETE", f"{NODES_PATH}/worker-2")
    node["metadata"]["labels"] = {"zone": "z3"}
    await kube.request("POST", NODES_PATH, node)
    await kube.wait(lambda: _has_node(ipamd, "worker-2", {"zone": "z3"}), "the new labels in ipamd")
    await asyncio.sleep(1.0)  # twice the grace period
    assert (await ipamd_labels(ipamd)).get("worker-2") == {"zone": "z3"}
    assert [lease["pod"]["uid"] for lease in await ipamd.held_leases("w2")] == ["uid-w2"]


async def _has_node(ipamd: Ipamd, name: str, labels: dict[str, str]) -> bool:
    return (await ipamd_labels(ipamd)).get(name) == labels
