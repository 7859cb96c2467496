"""One HTTP request to ipamd and the sorting of its failures, for ipamd's clients.

The node daemon (``leasewire.cni.ipamclient``) and the operator
(``leasewire.operator.ipamd``) call the same API and treat failures the same
way: ipamd unreachable, timed out, failing on its side (5xx) or answering an
error without a readable error body is worth retrying later; a 4xx with an
error body rejects the request. Each client turns the two exceptions here into
its own error classes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from pydantic import ValidationError

from leasewire.api import ErrorBody

logger = logging.getLogger(__name__)


class UnavailableError(Exception):
    """ipamd could not be reached, timed out, failed, or answered an unreadable error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RejectedError(Exception):
    """ipamd rejected the request with a 4xx status and an error body."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(body.message)
        self.status = status
        self.body = body


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    label: str,
    params: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    """Send one request and return its status and JSON payload (None when the body is empty).

    ``label`` names the request in the failure reasons, e.g. ``"GET /v1/leases"``.
    Raises UnavailableError or RejectedError as the module docstring describes;
    a transport failure is the cause of the UnavailableError.
    """
    try:
        async with session.request(method, url, params=params, json=json_body) as response:
            status = response.status
            text = await response.text()
    except TimeoutError:
        # aiohttp raises TimeoutError when the session's ClientTimeout expires.
        raise UnavailableError(f"{label} timed out after {session.timeout.total} s") from None
    except aiohttp.ClientError as error:
        raise UnavailableError(f"{label} failed: {error}") from error
    logger.debug("%s %s -> %d", method, url, status)

    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None

    if status >= 500:
        raise UnavailableError(f"{label} returned HTTP {status}: {text[:200]}")
    if status >= 400:
        try:
            error_body = ErrorBody.model_validate(payload)
        except ValidationError:
            raise UnavailableError(
                f"{label} returned HTTP {status} without an error body: {text[:200]}"
            ) from None
        raise RejectedError(status, error_body)
    return status, payload
