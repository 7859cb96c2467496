"""Assembly of the operator: Kopf's registry with every handler, its settings, and the run."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import kopf

from leasewire.operator import pools, profiles, workloads
from leasewire.operator.config import FINALIZER, GROUP, OperatorConfig
from leasewire.operator.kube import login
from leasewire.operator.runtime import Runtime

log = logging.getLogger(__name__)

MAX_PRIORITY = 32767
"""Upper bound of a random peering priority; two replicas tie with odds of 1 in 32768."""


def create_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """Build a Kopf registry whose handlers use ``runtime``'s settings and ipamd client."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login_handler(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return login(settings)

    @kopf.on.startup(registry=registry)
    async def open_runtime(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf.operator() makes the peering namespaced when --namespace is given, but pools and
        # nodes are cluster-wide, so one replica must act cluster-wide. Kopf reads it after startup.
        settings.peering.clusterwide = True
        runtime.settings = settings
        await runtime.open()

    @kopf.on.cleanup(registry=registry)
    async def close_runtime(**_: Any) -> None:
        await runtime.close()

    pools.register(registry, runtime)
    profiles.register(registry, runtime)
    workloads.register(registry, runtime)
    return registry


def create_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """Kopf settings: leasewire's finalizer and annotation keys, peering, and retry delays."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.peering.name = config.peering
    settings.peering.standalone = config.standalone
    settings.peering.clusterwide = True  # kopf.operator() resets it, open_runtime sets it again
    settings.peering.priority = (
        config.priority if config.priority is not None else random.randint(0, MAX_PRIORITY)
    )
    settings.execution.max_workers = 8
    return settings


async def run_operator(
    config: OperatorConfig,
    *,
    settings: kopf.OperatorSettings | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set or a signal stops it."""
    runtime = Runtime(config)
    settings = settings or create_settings(config)
    log.info(
        "operator starting for cluster %s, peering %s with priority %d%s",
        config.cluster,
        config.peering,
        settings.peering.priority,
        "" if config.clusterwide else f", namespaces {', '.join(config.namespaces)}",
    )
    await kopf.operator(
        registry=create_registry(runtime),
        settings=settings,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
