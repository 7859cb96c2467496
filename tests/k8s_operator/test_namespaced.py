"""An operator that serves some namespaces (``--namespace``) leaves the other pods' leases alone.

It runs with peering, as the Deployment does. The peering stays cluster-wide (one
ClusterKopfPeering) because pools, attach profiles and nodes are cluster-wide, so
the API server here serves no namespaced KopfPeering resource at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from leasewire.operator.config import OperatorConfig

if TYPE_CHECKING:
    from .operator_harness import Ipamd, KubeApi, OperatorThread

pytest_plugins = ("k8s_operator.operator_harness",)

POOLS = "leasewire.io/v1alpha1/ippools"
POOLS_PATH = "/apis/leasewire.io/v1alpha1/ippools"
PEERINGS_PATH = "/apis/kopf.dev/v1/clusterkopfpeerings"


@pytest.fixture
def operator_config(operator_config: OperatorConfig) -> OperatorConfig:
    return dataclasses.replace(
        operator_config, namespaces=("team-a",), standalone=False, peering="leasewire", priority=1
    )


@pytest.fixture
async def operator(
    operator_config: OperatorConfig, kubeconfig: Path
) -> AsyncIterator[OperatorThread]:
    """Run the harness's operator with the served namespaces given instead of listed.

    kmock 0.8 cannot serve ``GET /api/v1/namespaces``: its path parser takes
    ``namespaces`` for the start of ``/namespaces/{name}/...`` and fails with
    "not enough values to unpack" (HTTP 500). With scanning off, Kopf watches the
    named namespaces without listing them, as it does when RBAC forbids the listing.
    """
    from .operator_harness import OperatorThread

    running = OperatorThread(operator_config)
    running.settings.scanning.disabled = True
    await running.start()
    yield running
    await running.stop()


def pod(namespace: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"nodeName": "node-a"},
    }


@pytest.mark.usefixtures("operator")
async def test_other_namespaces_untouched(kube: KubeApi, ipamd: Ipamd) -> None:
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "leasewire"},
    }
    await kube.request("POST", PEERINGS_PATH, peering)
    pool = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "scoped"},
        "spec": {"cidr": "10.94.0.0/24"},
    }
    await kube.request("POST", POOLS_PATH, pool)
    await kube.wait(
        lambda: kube.condition(POOLS, "scoped", "Ready").get("status") == "True",
        "Ready (the operator must not wait for a namespaced peering)",
    )

    for namespace, name, uid in [("team-a", "a-0", "uid-a0"), ("team-b", "b-0", "uid-b0")]:
        path = f"/api/v1/namespaces/{namespace}/pods"
        await kube.request("POST", path, pod(namespace, name, uid))
        await ipamd.lease("scoped", uid=uid, name=name, namespace=namespace)
    # Leases whose pods exist nowhere: the reconciliation judges only team-a's.
    await ipamd.lease("scoped", uid="uid-a-gone", name="a-gone", namespace="team-a")
    await ipamd.lease("scoped", uid="uid-b-gone", name="b-gone", namespace="team-b")

    await kube.request("DELETE", "/api/v1/namespaces/team-a/pods/a-0")
    await kube.request("DELETE", "/api/v1/namespaces/team-b/pods/b-0")

    async def held() -> set[str]:
        return {lease["pod"]["uid"] for lease in await ipamd.held_leases("scoped")}

    async def team_a_released() -> bool:
        return await held() == {"uid-b0", "uid-b-gone"}

    await kube.wait(team_a_released, "team-a's leases to be released")
    # Several reconciliation passes, each longer than the grace period, keep team-b's.
    await asyncio.sleep(1.0)
    assert await held() == {"uid-b0", "uid-b-gone"}
