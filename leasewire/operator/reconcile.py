"""Lease reconciliation: release the leases whose pods are gone, and only those.

A lease is released only on this evidence:

1. its pod UID is absent from a pod listing that started after the lease was
   created (a lease created during or after a listing is never judged by it);
2. the UID is still absent from a second listing that started at least the
   grace period after the first one;
3. right before the release, a fresh read of the pod by namespace and name
   finds no pod, or a pod with another UID (a StatefulSet pod that came back
   under the same name is another pod);
4. the release asks ipamd for that pod UID with ``createdBefore`` set to the
   start of the first listing, so a lease that the same pod got later stays.

The owner identity is the pod UID. Leases without one (not made for a
Kubernetes pod) and leases of pods outside the served namespaces are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import kopf

from leasewire.api import LeaseView
from leasewire.operator.kube import KubeClient, KubeError, login
from leasewire.operator.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Suspect:
    """A pod UID that holds leases but was absent from a listing that started at ``since``."""

    since: datetime
    namespace: str
    name: str


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class LeaseReconciler:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._suspects: dict[str, dict[str, Suspect]] = {}
        """Per pool: pod UID -> when it was first seen absent."""

    def forget(self, pool: str) -> None:
        self._suspects.pop(pool, None)

    async def reconcile(self, *, pool: str, logger: kopf.Logger | logging.Logger) -> int:
        """Run one pass over the pool's leases of this cluster; return how many were released."""
        config = self._runtime.config
        ipamd = self._runtime.ipamd
        grace = timedelta(seconds=config.pod_grace_seconds)

        try:
            async with KubeClient(login(self._runtime.settings)) as kube:
                # The listing's start time bounds what it can judge: a lease created
                # after this moment may belong to a pod that the listing missed.
                listing_started = datetime.now(tz=UTC)
                namespaces = list(config.namespaces) if config.namespaces else None
                live_uids = {pod.uid for pod in await kube.list_pods(namespaces)}
                leases = await ipamd.list_leases(pool=pool, cluster=config.cluster)
                suspects = self._update_suspects(pool, leases, live_uids, listing_started)

                due = [
                    (uid, suspect)
                    for uid, suspect in suspects.items()
                    if listing_started - suspect.since >= grace
                ]
                released = 0
                for uid, suspect in due:
                    released += await self._release_if_gone(
                        kube, pool=pool, uid=uid, suspect=suspect, logger=logger
                    )
                return released
        except (KubeError, kopf.LoginError) as error:
            logger.warning("Lease reconciliation of pool %s skipped: %s", pool, error)
            return 0

    def _update_suspects(
        self,
        pool: str,
        leases: list[LeaseView],
        live_uids: set[str],
        listing_started: datetime,
    ) -> dict[str, Suspect]:
        served = set(self._runtime.config.namespaces)
        previous = self._suspects.get(pool, {})
        current: dict[str, Suspect] = {}
        for lease in leases:
            uid = lease.pod.uid
            if not uid or uid in live_uids:
                continue
            if served and lease.pod.namespace not in served:
                continue
            if parse_time(lease.created_at) >= listing_started:
                continue
            current[uid] = previous.get(uid) or Suspect(
                since=listing_started, namespace=lease.pod.namespace, name=lease.pod.name
            )
        self._suspects[pool] = current
        return current

    async def _release_if_gone(
        self,
        kube: KubeClient,
        *,
        pool: str,
        uid: str,
        suspect: Suspect,
        logger: kopf.Logger | logging.Logger,
    ) -> int:
        config = self._runtime.config
        pod = None
        if suspect.namespace and suspect.name:
            pod = await kube.read_pod(suspect.namespace, suspect.name)
        if pod is not None and pod.uid == uid:
            # Listed late, but alive: keep its leases and forget the suspicion.
            self._suspects[pool].pop(uid, None)
            return 0

        released = await self._runtime.ipamd.release_leases(
            cluster=config.cluster, podUID=uid, pool=pool, created_before=suspect.since
        )
        self._suspects[pool].pop(uid, None)
        if released:
            logger.info(
                "Released %d lease(s) of gone pod %s/%s (uid %s): %s",
                len(released),
                suspect.namespace,
                suspect.name,
                uid,
                ", ".join(lease.address for lease in released),
            )
        return len(released)
