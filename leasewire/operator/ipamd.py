"""HTTP client of ipamd's pool, lease, attach-profile and node API, as the operator uses it.

Failures come out as two exceptions: IpamdUnavailableError when ipamd cannot be
reached, times out or fails on its side (the operator retries with a backoff),
and IpamdRejectedError when ipamd refuses the request with a 4xx error code
(the request has to change first, so the operator does not retry it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from leasewire import ipamdhttp
from leasewire.api import LeaseView, PoolSpec, PoolView, ReleasedLeases

ModelT = TypeVar("ModelT", bound=BaseModel)

REQUEST_TIMEOUT_S = 15.0
"""Seconds for one request to ipamd. ipamd answers in one short transaction, so
a request that takes longer than this means ipamd or its database is stuck."""


class IpamdUnavailableError(Exception):
    """ipamd could not be reached, timed out, or failed on its side (HTTP 5xx)."""


class IpamdRejectedError(Exception):
    """ipamd rejected the request with an error code; retrying it unchanged cannot help."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def read_token(token_file: Path | None) -> str | None:
    """Read the bearer token for ipamd from ``token_file``; None when no file is configured."""
    if token_file is None:
        return None
    token = token_file.read_text().strip()
    if not token:
        raise ValueError(f"the ipamd token file {token_file} is empty; write the cluster's token")
    return token


class IpamdClient:
    """Calls to ipamd's API, version 1, through one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self._base_url

    async def put_pool(self, name: str, spec: PoolSpec) -> tuple[PoolView, bool]:
        """Create or update pool ``name``; return it and whether this call created it."""
        body = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        status, payload = await self._request("PUT", f"/v1/pools/{name}", json_body=body)
        return self._parse(PoolView, payload), status == 201

    async def get_pool(self, name: str) -> PoolView | None:
        """Return pool ``name``, or None when ipamd has no such pool."""
        try:
            _, payload = await self._request("GET", f"/v1/pools/{name}")
        except IpamdRejectedError as error:
            if error.status == 404:
                return None
            raise
        return self._parse(PoolView, payload)

    async def delete_pool(self, name: str) -> bool:
        """Delete pool ``name``; return False when it did not exist.

        A pool that still holds leases makes ipamd answer 409 ``pool_in_use``,
        raised as IpamdRejectedError with the holders in ``details``.
        """
        try:
            await self._request("DELETE", f"/v1/pools/{name}")
        except IpamdRejectedError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list_leases(self, **filters: str) -> list[LeaseView]:
        """List the held leases that match every filter (pool, cluster, node, podUID, ...)."""
        _, payload = await self._request("GET", "/v1/leases", params=filters)
        # Older ipamd versions answer a bare list, newer ones {"leases": [...]}.
        items = payload.get("leases") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise IpamdUnavailableError(
                f"ipamd at {self._base_url} returned an unexpected lease list: {payload!r:.200}"
            )
        return [self._parse(LeaseView, item) for item in items]

    async def release_leases(
        self, *, cluster: str, created_before: datetime | None = None, **filters: str
    ) -> list[LeaseView]:
        """Release every held lease of ``cluster`` that matches all filters; return them.

        ``created_before`` spares the leases created at or after that time.
        """
        params = {"cluster": cluster, **filters}
        if created_before is not None:
            params["createdBefore"] = created_before.isoformat()
        _, payload = await self._request("DELETE", "/v1/leases", params=params)
        if isinstance(payload, list):
            return [self._parse(LeaseView, item) for item in payload]
        return self._parse(ReleasedLeases, payload).released

    async def put_attach_profile(self, name: str, body: dict[str, Any]) -> None:
        await self._request("PUT", f"/v1/attach-profiles/{name}", json_body=body)

    async def delete_attach_profile(self, name: str) -> bool:
        """Delete attach profile ``name``; return False when it did not exist."""
        try:
            await self._request("DELETE", f"/v1/attach-profiles/{name}")
        except IpamdRejectedError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def put_node(self, name: str, *, cluster: str, labels: dict[str, str]) -> None:
        body = {"cluster": cluster, "labels": labels}
        await self._request("PUT", f"/v1/nodes/{name}", json_body=body)

    async def delete_node(self, name: str, *, cluster: str) -> bool:
        """Forget node ``name`` of ``cluster``; return False when ipamd did not know it."""
        try:
            await self._request("DELETE", f"/v1/nodes/{name}", params={"cluster": cluster})
        except IpamdRejectedError as error:
            if error.status == 404:
                return False
            raise
        return True

    def _parse(self, model: type[ModelT], payload: Any) -> ModelT:
        try:
            return model.model_validate(payload)
        except ValidationError as error:
            raise IpamdUnavailableError(
                f"ipamd at {self._base_url} returned an unexpected {model.__name__}: {error}"
            ) from error

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        url = self._base_url + path
        try:
            return await ipamdhttp.request_json(
                self._session,
                method,
                url,
                label=f"{method} {url}",
                params=params,
                json_body=json_body,
            )
        except ipamdhttp.UnavailableError as error:
            raise IpamdUnavailableError(error.reason) from error.__cause__
        except ipamdhttp.RejectedError as error:
            body = error.body
            raise IpamdRejectedError(error.status, body.code, body.message, body.details) from None
