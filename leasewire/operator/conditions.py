"""Status conditions as Kubernetes defines them: type, status, reason, message and
lastTransitionTime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reason_from_code(code: str) -> str:
    """Turn an ipamd error code (``pool_in_use``) into a condition reason (``PoolInUse``)."""
    return "".join(part.capitalize() for part in code.split("_") if part) or "Unknown"


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with the one of ``type_`` set; None as status means Unknown.

    lastTransitionTime changes only when the status changes, as kubectl and
    controllers expect.
    """
    text = "Unknown" if status is None else ("True" if status else "False")
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions or []:
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        changed = condition.get("status") != text
        result.append(
            {
                "type": type_,
                "status": text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": (
                    now_rfc3339() if changed else condition.get("lastTransitionTime")
                )
                or now_rfc3339(),
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now_rfc3339(),
            }
        )
    return result
