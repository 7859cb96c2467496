"""Two operator replicas with Kopf peering against one API server: one acts, the other waits.

Each replica sends its own bearer token to ipamd, so the test counts which
replica sent what. The peering lifetime is 3 s, so the keep-alives come every
second and a replica that vanished without a word is presumed dead after 3 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kmock as kmocklib
import pytest

from leasewire.operator.config import OperatorConfig

if TYPE_CHECKING:
    from .operator_harness import Ipamd, KubeApi, OperatorThread

pytest_plugins = ("k8s_operator.operator_harness",)

POOLS = "leasewire.io/v1alpha1/ippools"
POOLS_PATH = "/apis/leasewire.io/v1alpha1/ippools"
PEERINGS = "kopf.dev/v1/clusterkopfpeerings"
PEERINGS_PATH = "/apis/kopf.dev/v1/clusterkopfpeerings"
LIFETIME = 3
ACTIVE_PRIORITY = 200
WAITING_PRIORITY = 100


def live_peers(kube: KubeApi) -> dict[str, Any]:
    """Replicas that the peering object lists as alive (a leaving one sets lifetime 0)."""
    status = (kube.get(PEERINGS, "leasewire") or {}).get("status") or {}
    return {key: value for key, value in status.items() if value and value.get("lifetime")}


async def make_pool(kube: KubeApi, name: str, cidr: str) -> None:
    body = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr},
    }
    await kube.request("POST", POOLS_PATH, body)
    await kube.wait(lambda: kube.condition(POOLS, name, "Ready").get("status") == "True", "Ready")


@pytest.fixture
async def replicas(
    kube: KubeApi, operator_config: OperatorConfig, kubeconfig: Path, tmp_path: Path
) -> AsyncIterator[tuple[OperatorThread, OperatorThread]]:
    """Two replicas in one peering: "first" with the higher priority, then "second"."""
    from .operator_harness import OperatorThread

    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "leasewire"},
    }
    await kube.request("POST", PEERINGS_PATH, peering)

    def replica(token: str, priority: int) -> OperatorThread:
        config = dataclasses.replace(
            operator_config,
            standalone=False,
            peering="leasewire",
            priority=priority,
            token_file=tmp_path / f"{token}.token",
        )
        return OperatorThread(config, token=token, peering_lifetime=LIFETIME)

    first = replica("first", ACTIVE_PRIORITY)
    second = replica("second", WAITING_PRIORITY)
    try:
        await first.start()
        await kube.wait(lambda: len(live_peers(kube)) == 1, "the first replica in the peering")
        await second.start()
        await kube.wait(lambda: len(live_peers(kube)) == 2, "both replicas in the peering")
        yield first, second
    finally:
        kube.emulator.lose = None
        await second.stop()
        await first.stop()


async def only_first_acts(kube: KubeApi, ipamd: Ipamd) -> None:
    await make_pool(kube, "shared", "10.91.0.0/24")
    # The waiting replica's watches and timers are paused: during several pool timer
    # passes it sends nothing at all to ipamd.
    await asyncio.sleep(1.0)
    assert ipamd.seen_from("first", "PUT", "/v1/pools/shared") >= 1
    assert [request for request in ipamd.seen if request.token == "second"] == []


async def second_took_over(kube: KubeApi, ipamd: Ipamd) -> None:
    async def resumed() -> bool:
        return ipamd.seen_from("second", "PUT", "/v1/pools/shared") >= 1

    await kube.wait(resumed, "the second replica to resume the existing pool")
    await make_pool(kube, "later", "10.92.0.0/24")
    assert ipamd.seen_from("second", "PUT", "/v1/pools/later") >= 1
    assert ipamd.seen_from("first", "PUT", "/v1/pools/later") == 0


async def test_second_replica_takes_over_after_a_stop(
    kube: KubeApi, ipamd: Ipamd, replicas: tuple[OperatorThread, OperatorThread]
) -> None:
    first, _ = replicas
    await only_first_acts(kube, ipamd)

    # SIGTERM: the first replica leaves the peering, the second resumes at once.
    await first.stop()
    assert [peer["priority"] for peer in live_peers(kube).values()] == [WAITING_PRIORITY]
    await second_took_over(kube, ipamd)


async def test_second_replica_takes_over_after_a_crash(
    kube: KubeApi, ipamd: Ipamd, replicas: tuple[OperatorThread, OperatorThread]
) -> None:
    first, _ = replicas
    await only_first_acts(kube, ipamd)

    (identity,) = [
        key for key, peer in live_peers(kube).items() if peer["priority"] == ACTIVE_PRIORITY
    ]

    def goodbye(request: kmocklib.Request) -> bool:
        # A replica leaves the peering by setting its own entry to null. Only the first
        # such patch is lost: the later ones come from the second replica, which removes
        # the dead entry once its lifetime is over.
        entries = request.data.get("status") or {}
        if identity in entries and entries[identity] is None:
            kube.emulator.lose = None
            return True
        return False

    # A crash: the first replica stops without its goodbye reaching the API server,
    # so the peering object lists it alive until its lifetime runs out.
    kube.emulator.lose = goodbye
    stopping = time.monotonic()
    await first.stop()
    assert sorted(peer["priority"] for peer in live_peers(kube).values()) == [
        WAITING_PRIORITY,
        ACTIVE_PRIORITY,
    ]
    await second_took_over(kube, ipamd)
    # The first replica's last keep-alive came at most about a second before its stop began.
    waited = time.monotonic() - stopping
    assert waited >= LIFETIME - 1.5, f"took over {waited:.1f} s after the stop, before expiry"
