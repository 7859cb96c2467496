"""Pod and node events: leases of deleted pods and nodes go back to ipamd; node labels go to it.

These handlers watch core resources that other controllers own, so they use
event handlers, which never patch the watched objects (no finalizers, no
annotations on pods or nodes). A missed event costs nothing lasting: the pool
timer's reconciliation releases what a deleted pod left behind.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from leasewire.operator.ipamd import IpamdRejectedError, IpamdUnavailableError
from leasewire.operator.kube import KubeClient, KubeError, login
from leasewire.operator.runtime import Runtime

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    config = runtime.config

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def pod_event(
        type: str, name: str, namespace: str | None, uid: str, logger: kopf.Logger, **_: Any
    ) -> None:
        if type != "DELETED" or not uid:
            return
        if config.namespaces and namespace not in config.namespaces:
            return
        try:
            released = await runtime.ipamd.release_leases(cluster=config.cluster, podUID=uid)
        except (IpamdUnavailableError, IpamdRejectedError) as error:
            logger.warning(
                "Leases of deleted pod %s/%s (uid %s) not released; the pool timer retries: %s",
                namespace,
                name,
                uid,
                error,
            )
            return
        if released:
            logger.info(
                "Released %d lease(s) of deleted pod %s/%s (uid %s): %s",
                len(released),
                namespace,
                name,
                uid,
                ", ".join(lease.address for lease in released),
            )

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(
        type: str, name: str, labels: kopf.Labels, logger: kopf.Logger, **_: Any
    ) -> None:
        if type == "DELETED":
            runtime.node_labels.pop(name, None)
            _schedule_node_release(runtime, name, datetime.now(tz=UTC))
            return

        pending = runtime.node_releases.pop(name, None)
        if pending is not None:
            pending.cancel()
        current = dict(labels)
        if runtime.node_labels.get(name) == current:
            return
        try:
            await runtime.ipamd.put_node(name, cluster=config.cluster, labels=current)
        except (IpamdUnavailableError, IpamdRejectedError) as error:
            # The next event of this node (kubelets update their nodes regularly) retries.
            logger.warning("Labels of node %s not sent to ipamd: %s", name, error)
            return
        runtime.node_labels[name] = current
        logger.debug("Labels of node %s sent to ipamd.", name)


def _schedule_node_release(runtime: Runtime, name: str, deleted_at: datetime) -> None:
    previous = runtime.node_releases.pop(name, None)
    if previous is not None:
        previous.cancel()
    task = asyncio.create_task(
        _release_node(runtime, name, deleted_at), name=f"release leases of node {name}"
    )
    runtime.node_releases[name] = task
    task.add_done_callback(
        lambda done: (
            runtime.node_releases.pop(name, None)
            if runtime.node_releases.get(name) is done
            else None
        )
    )


async def _release_node(runtime: Runtime, name: str, deleted_at: datetime) -> None:
    """Release the leases of a deleted node once the grace period is over.

    Retries while ipamd or the API server is unreachable. A node that exists
    again at the end of the grace period keeps its leases: the pod
    reconciliation judges them pod by pod.
    """
    config = runtime.config
    await asyncio.sleep(config.node_grace_seconds)
    while True:
        try:
            async with KubeClient(login(runtime.settings)) as kube:
                if await kube.node_exists(name):
                    log.info("Node %s exists again; its leases are kept.", name)
                    return
            released = await runtime.ipamd.release_leases(
                cluster=config.cluster, node=name, created_before=deleted_at
            )
            await runtime.ipamd.delete_node(name, cluster=config.cluster)
        except (KubeError, kopf.LoginError, IpamdUnavailableError) as error:
            log.warning(
                "Leases of deleted node %s not released yet, retrying in %.0f s: %s",
                name,
                config.retry_seconds,
                error,
            )
            await asyncio.sleep(config.retry_seconds)
            continue
        except IpamdRejectedError as error:
            log.error("ipamd rejected releasing the leases of deleted node %s: %s", name, error)
            return
        log.info("Released %d lease(s) of deleted node %s.", len(released), name)
        return
