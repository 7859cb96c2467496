"""HTTP client of ipamd's lease API, as the node daemon uses it.

Failures come out as two exceptions: IpamUnavailableError when ipamd cannot
be reached, times out or fails on its side (worth retrying), and
IpamRejectedError when ipamd refuses the request with an error code (the
request has to change first).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from pydantic import ValidationError

from leasewire.api import ErrorBody, LeaseCreate, LeaseState, LeaseView, Owner

logger = logging.getLogger(__name__)


class IpamUnavailableError(Exception):
    """ipamd could not be reached, timed out, or failed internally."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"ipamd at {endpoint} is unavailable: {reason}")
        self.endpoint = endpoint


class IpamRejectedError(Exception):
    """ipamd refused the request; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class IpamClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self._base_url

    async def create_lease(self, request: LeaseCreate) -> tuple[LeaseView, bool]:
        """Lease an address; return the lease and whether this call created it.

        ipamd returns 201 for a new lease and 200 when the owner already holds one.
        """
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        status, payload = await self._request("POST", "/v1/leases", json_body=body)
        return self._lease(payload), status == 201

    async def release_lease(self, owner: Owner) -> None:
        """Release the owner's lease. A lease that does not exist counts as released."""
        params = {
            "cluster": owner.cluster,
            "containerID": owner.container_id,
            "ifname": owner.ifname,
        }
        try:
            await self._request("DELETE", "/v1/leases", params=params)
        except IpamRejectedError as error:
            if error.status != 404:
                raise

    async def find_lease(self, *, pool: str, node: str, owner: Owner) -> LeaseView | None:
        """Return the owner's lease in ``pool`` on ``node``, or None."""
        _, payload = await self._request("GET", "/v1/leases", params={"pool": pool, "node": node})
        items = payload.get("leases") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise IpamUnavailableError(self._base_url, f"unexpected lease list: {payload!r:.200}")
        for item in items:
            lease = self._lease(item)
            if lease.owner == owner and lease.state is not LeaseState.RELEASED:
                return lease
        return None

    def _lease(self, payload: Any) -> LeaseView:
        try:
            return LeaseView.model_validate(payload)
        except ValidationError as error:
            raise IpamUnavailableError(
                self._base_url, f"unexpected lease in the response: {error}"
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
            async with self._session.request(
                method, url, params=params, json=json_body
            ) as response:
                status = response.status
                text = await response.text()
        except TimeoutError:
            # aiohttp raises TimeoutError when the session's ClientTimeout expires.
            timeout = self._session.timeout.total
            raise IpamUnavailableError(
                self._base_url, f"{method} {path} timed out after {timeout} s"
            ) from None
        except aiohttp.ClientError as error:
            raise IpamUnavailableError(
                self._base_url, f"{method} {path} failed: {error}"
            ) from error
        logger.debug("%s %s -> %s", method, url, status)

        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None

        if status >= 500 or (status >= 400 and payload is None):
            raise IpamUnavailableError(
                self._base_url, f"{method} {path} returned HTTP {status}: {text[:200]}"
            )
        if status >= 400:
            try:
                error_body = ErrorBody.model_validate(payload)
            except ValidationError:
                raise IpamUnavailableError(
                    self._base_url, f"{method} {path} returned HTTP {status}: {text[:200]}"
                ) from None
            raise IpamRejectedError(status, error_body.code, error_body.message)
        return status, payload
