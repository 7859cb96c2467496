"""AttachProfile handlers: each profile is upserted into ipamd, and deleted from it with
the resource."""

from __future__ import annotations

from typing import Any

import kopf

from leasewire.operator.conditions import reason_from_code, set_condition
from leasewire.operator.config import GROUP, VERSION
from leasewire.operator.ipamd import IpamdRejectedError, IpamdUnavailableError
from leasewire.operator.runtime import Runtime

RESOURCE = (GROUP, VERSION, "attachprofiles")


def profile_body(spec: kopf.Spec) -> dict[str, Any]:
    return {
        "nodeSelector": dict(spec.get("nodeSelector") or {}),
        "driver": spec.get("driver"),
        "options": dict(spec.get("options") or {}),
        "priority": spec.get("priority", 0),
    }


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    config = runtime.config

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    async def sync_profile(
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
            await runtime.ipamd.put_attach_profile(name, profile_body(spec))
        except IpamdRejectedError as error:
            message = f"ipamd rejected attach profile {name}: {error.message}"
            patch.status["conditions"] = set_condition(
                conditions,
                type_="Synced",
                status=False,
                reason=reason_from_code(error.code),
                message=message,
            )
            raise kopf.PermanentError(message) from None
        except IpamdUnavailableError as error:
            patch.status["conditions"] = set_condition(
                conditions,
                type_="Synced",
                status=False,
                reason="IpamdUnavailable",
                message=str(error),
            )
            raise kopf.TemporaryError(str(error), delay=config.retry_seconds) from None
        patch.status["conditions"] = set_condition(
            conditions,
            type_="Synced",
            status=True,
            reason="Applied",
            message="ipamd has this attach profile",
        )
        logger.info("Attach profile %s sent to ipamd.", name)

    @kopf.on.delete(*RESOURCE, registry=registry)
    async def delete_profile(name: str, logger: kopf.Logger, **_: Any) -> None:
        try:
            existed = await runtime.ipamd.delete_attach_profile(name)
        except IpamdUnavailableError as error:
            raise kopf.TemporaryError(str(error), delay=config.retry_seconds) from None
        except IpamdRejectedError as error:
            raise kopf.TemporaryError(
                f"ipamd rejected the deletion of attach profile {name}: {error.message}",
                delay=config.retry_seconds,
            ) from None
        logger.info(
            "Attach profile %s %s.", name, "deleted from ipamd" if existed else "was not in ipamd"
        )
