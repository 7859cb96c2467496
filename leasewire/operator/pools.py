"""IPPool handlers: the resource's spec is upserted into ipamd, its usage shown in the status.

- create, update (of the spec) and resume: ``PUT /v1/pools/{name}``. A 4xx
  refusal (overlap, invalid field, immutable CIDR) sets Ready=False with
  ipamd's message and fails the handler permanently, so Kopf retries only after
  the next spec change. ipamd unreachable or failing: retried with a delay.
- delete: ``DELETE /v1/pools/{name}``, held by the finalizer while ipamd
  answers 409 ``pool_in_use``; the status names how many leases and which pods.
- a timer refreshes the counts and runs the lease reconciliation of the pool.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from leasewire.api import PoolSpec, PoolView
from leasewire.operator.conditions import reason_from_code, set_condition
from leasewire.operator.config import GROUP, VERSION
from leasewire.operator.ipamd import IpamdRejectedError, IpamdUnavailableError
from leasewire.operator.reconcile import LeaseReconciler
from leasewire.operator.runtime import Runtime

RESOURCE = (GROUP, VERSION, "ippools")

MAX_HOLDERS_SHOWN = 20
"""Holders listed in the status of a pool whose deletion waits; the count covers all."""


def pool_spec(spec: kopf.Spec, *, cluster: str) -> PoolSpec:
    """Build ipamd's pool body from an IPPool spec. Raises ValidationError."""
    selectors = spec.get("selectors") or {}
    body: dict[str, Any] = {
        "cidr": spec.get("cidr"),
        "gateway": spec.get("gateway"),
        "ranges": list(spec.get("ranges") or []),
        "exclude": list(spec.get("exclude") or []),
        "routes": list(spec.get("routes") or []),
        "dns": dict(spec.get("dns") or {}),
        "priority": spec.get("priority", 0),
        "selectors": {
            "namespaceLabels": dict(selectors.get("namespaceLabels") or {}),
            "nodeLabels": dict(selectors.get("nodeLabels") or {}),
        },
        "cluster": None if spec.get("scope") == "Global" else cluster,
        "vlan": spec.get("vlan"),
    }
    if "cooldownSeconds" in spec:
        body["cooldownSeconds"] = spec["cooldownSeconds"]
    return PoolSpec.model_validate(body)


def _counts(view: PoolView) -> dict[str, int]:
    return {
        "total": view.size,
        "allocated": view.allocated,
        "free": view.free,
        "pending": view.pending,
        "bound": view.bound,
    }


def _ready_message(view: PoolView) -> tuple[str, str]:
    if view.free == 0:
        return "Exhausted", f"all {view.size} addresses are allocated or cooling down"
    return "Available", f"{view.free} of {view.size} addresses are free"


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    config = runtime.config
    reconciler = LeaseReconciler(runtime)

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    async def sync_pool(
        name: str,
        spec: kopf.Spec,
        status: kopf.Status,
        meta: kopf.Meta,
        patch: kopf.Patch,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        conditions = status.get("conditions")
        patch.status["observedGeneration"] = meta.get("generation")
        try:
            body = pool_spec(spec, cluster=config.cluster)
            view, created = await runtime.ipamd.put_pool(name, body)
        except ValidationError as error:
            message = f"invalid IPPool spec: {error}"
            _refused(patch, conditions, reason="InvalidSpec", message=message)
            raise kopf.PermanentError(message) from None
        except IpamdRejectedError as error:
            message = f"ipamd rejected pool {name}: {error.message}"
            _refused(patch, conditions, reason=reason_from_code(error.code), message=message)
            raise kopf.PermanentError(message) from None
        except IpamdUnavailableError as error:
            conditions = set_condition(
                conditions,
                type_="Synced",
                status=False,
                reason="IpamdUnavailable",
                message=str(error),
            )
            patch.status["conditions"] = conditions
            raise kopf.TemporaryError(str(error), delay=config.retry_seconds) from None

        logger.info(
            "Pool %s %s in ipamd (generation %d).",
            name,
            "created" if created else "updated",
            view.generation,
        )
        reason, message = _ready_message(view)
        conditions = set_condition(
            conditions,
            type_="Synced",
            status=True,
            reason="Applied",
            message=f"ipamd has generation {view.generation} of this pool",
        )
        conditions = set_condition(
            conditions, type_="Ready", status=True, reason=reason, message=message
        )
        patch.status.update(_counts(view))
        patch.status["conditions"] = conditions

    @kopf.on.delete(*RESOURCE, registry=registry)
    async def delete_pool(
        name: str, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        conditions = status.get("conditions")
        try:
            existed = await runtime.ipamd.delete_pool(name)
        except IpamdRejectedError as error:
            if error.code != "pool_in_use":
                raise kopf.TemporaryError(
                    f"ipamd rejected the deletion of pool {name}: {error.message}",
                    delay=config.retry_seconds,
                ) from None
            raw_holders = error.details.get("holders")
            holders = (
                [h for h in raw_holders if isinstance(h, dict)]
                if isinstance(raw_holders, list)
                else []
            )
            pods = sorted({f"{h.get('namespace')}/{h.get('name')}" for h in holders})
            message = (
                f"deletion waits: {len(holders)} leases are still held, by pods "
                + ", ".join(pods[:MAX_HOLDERS_SHOWN])
                + (" and more" if len(pods) > MAX_HOLDERS_SHOWN else "")
            )
            patch.status["holders"] = holders[:MAX_HOLDERS_SHOWN]
            patch.status["allocated"] = len(holders)
            patch.status["conditions"] = set_condition(
                conditions, type_="Ready", status=False, reason="PoolInUse", message=message
            )
            raise kopf.TemporaryError(message, delay=config.retry_seconds) from None
        except IpamdUnavailableError as error:
            raise kopf.TemporaryError(str(error), delay=config.retry_seconds) from None
        reconciler.forget(name)
        logger.info("Pool %s %s.", name, "deleted from ipamd" if existed else "was not in ipamd")

    @kopf.timer(*RESOURCE, interval=config.pool_refresh_seconds, registry=registry)
    async def refresh_pool(
        name: str, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        try:
            view = await runtime.ipamd.get_pool(name)
            if view is None:
                # Not created yet, or refused: the change handlers report that.
                return
            if await reconciler.reconcile(pool=name, logger=logger):
                view = await runtime.ipamd.get_pool(name) or view
        except IpamdUnavailableError as error:
            logger.warning("Pool %s: usage not refreshed: %s", name, error)
            return

        counts = _counts(view)
        if any(status.get(key) != value for key, value in counts.items()):
            patch.status.update(counts)
            conditions = status.get("conditions")
            ready = next((c for c in conditions or [] if c.get("type") == "Ready"), None)
            if ready is not None and ready.get("status") == "True":
                reason, message = _ready_message(view)
                patch.status["conditions"] = set_condition(
                    conditions, type_="Ready", status=True, reason=reason, message=message
                )


def _refused(patch: kopf.Patch, conditions: Any, *, reason: str, message: str) -> None:
    conditions = set_condition(
        conditions, type_="Synced", status=False, reason=reason, message=message
    )
    conditions = set_condition(
        conditions, type_="Ready", status=False, reason=reason, message=message
    )
    patch.status["conditions"] = conditions
