"""HTTP client of ipamd's lease API, as the node daemon uses it.

Failures come out as two exceptions: IpamUnavailableError when ipamd cannot
be reached, times out or fails on its side (worth retrying), and
IpamRejectedError when ipamd refuses the request with an error code (the
request has to change first).

Leases are read into ``NodeLease``, a tolerant view that keeps only what the
node daemon uses and ignores other keys, so that a newer ipamd that adds
fields keeps working with an older node daemon.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leasewire import ipamdhttp
from leasewire.api import LeaseState, Owner, PodRef
from leasewire.cni.timings import measure


class IpamUnavailableError(Exception):
    """ipamd could not be reached, timed out, or failed internally."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"ipamd at {endpoint} is unavailable: {reason}")
        self.endpoint = endpoint


class IpamRejectedError(Exception):
    """ipamd rejected the request; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class TolerantModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class RouteView(TolerantModel):
    dst: str
    gw: str | None = None


class AttachView(TolerantModel):
    """The attach profile that ipamd says applies to the lease's node."""

    profile: str | None = None
    driver: str
    options: dict[str, object] = Field(default_factory=dict)


class NodeLease(TolerantModel):
    """A lease as the node daemon reads it from ipamd."""

    pool: str
    address: str
    gateway: str | None = None
    state: LeaseState
    owner: Owner
    network: str = ""
    routes: list[RouteView] = Field(default_factory=list)
    dns: dict[str, object] = Field(default_factory=dict)
    # Driver and options recorded when the lease was confirmed.
    driver: str | None = None
    options: dict[str, object] = Field(default_factory=dict)
    attach: AttachView | None = None
    created_at: str = Field(default="", alias="createdAt")

    @property
    def held(self) -> bool:
        return self.state is not LeaseState.RELEASED


class LeaseRequest(TolerantModel):
    """What ADD asks ipamd for; turned into the body of ``POST /v1/leases``."""

    owner: Owner
    pod: PodRef
    node: str
    network: str
    pools: tuple[str, ...] = ()
    # Static addresses requested by the runtime, each going to the pool that contains it.
    addresses: tuple[str, ...] = ()
    mac: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "owner": self.owner.model_dump(mode="json", by_alias=True),
            "pod": self.pod.model_dump(mode="json", by_alias=True),
            "node": self.node,
            "network": self.network,
        }
        # One pool keeps the original single-pool form of the request.
        if len(self.pools) == 1:
            body["pool"] = self.pools[0]
        elif self.pools:
            body["pools"] = list(self.pools)
        # One address keeps the original single-address form of the request.
        if len(self.addresses) == 1:
            body["address"] = self.addresses[0]
        elif self.addresses:
            body["addresses"] = list(self.addresses)
        if self.mac is not None:
            body["mac"] = self.mac
        return body


class IpamClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self._base_url

    async def create_leases(self, request: LeaseRequest) -> tuple[list[NodeLease], bool]:
        """Lease addresses; return the leases and whether this call created them.

        ipamd returns 201 for new leases and 200 when the owner already holds them.
        """
        status, payload = await self._request("POST", "/v1/leases", json_body=request.body())
        items = payload.get("leases") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            items = [payload]
        return [self._lease(item) for item in items], status == 201

    async def confirm_leases(
        self, owner: Owner, driver: str, options: dict[str, object]
    ) -> list[NodeLease]:
        """Mark the owner's leases bound and record the driver; 404 when none is held."""
        body = {
            "owner": owner.model_dump(mode="json", by_alias=True),
            "driver": driver,
            "options": options,
        }
        _, payload = await self._request("POST", "/v1/leases/confirm", json_body=body)
        return self._leases(payload)

    async def release_leases(
        self, owner: Owner, *, network: str | None = None, created_before: str | None = None
    ) -> list[NodeLease]:
        """Release the owner's leases (of ``network`` only, when given) and return them.

        None held counts as released. ``created_before`` (RFC 3339) keeps
        leases created at or after that time, so that a late replay cannot
        release a newer ADD's lease.
        """
        params = self._owner_params(owner)
        if network is not None:
            params["network"] = network
        if created_before is not None:
            params["createdBefore"] = created_before
        try:
            _, payload = await self._request("DELETE", "/v1/leases", params=params)
        except IpamRejectedError as error:
            if error.status == 404:
                return []
            raise
        return self._leases(payload)

    async def find_leases(self, owner: Owner, network: str) -> list[NodeLease]:
        """Return the leases of ``network`` that the owner holds (pending or bound)."""
        params = {**self._owner_params(owner), "network": network}
        _, payload = await self._request("GET", "/v1/leases", params=params)
        return [
            lease
            for lease in self._leases(payload)
            if lease.owner == owner and lease.held and lease.network == network
        ]

    async def node_leases(
        self, *, cluster: str, node: str, network: str, state: str = "bound"
    ) -> list[NodeLease]:
        """Return the leases of ``network`` on ``node`` in ``state`` (bound, or held)."""
        params = {"cluster": cluster, "node": node, "network": network, "state": state}
        _, payload = await self._request("GET", "/v1/leases", params=params)
        return [lease for lease in self._leases(payload) if lease.network == network]

    async def pool_free(self, name: str) -> int | None:
        """Return the number of free addresses of a pool, or None when ipamd does not say."""
        _, payload = await self._request("GET", f"/v1/pools/{name}")
        free = payload.get("free") if isinstance(payload, dict) else None
        return free if isinstance(free, int) else None

    async def healthy(self) -> None:
        """Raise IpamUnavailableError unless ipamd answers its health check."""
        await self._request("GET", "/healthz")

    @staticmethod
    def _owner_params(owner: Owner) -> dict[str, str]:
        return {
            "cluster": owner.cluster,
            "containerID": owner.container_id,
            "ifname": owner.ifname,
        }

    def _leases(self, payload: Any) -> list[NodeLease]:
        # Lists arrive bare (older ipamd) or as {"leases": [...]} / {"released": [...]}.
        if isinstance(payload, dict):
            payload = payload.get("leases", payload.get("released"))
        if not isinstance(payload, list):
            raise IpamUnavailableError(self._base_url, f"unexpected lease list: {payload!r:.200}")
        return [self._lease(item) for item in payload]

    def _lease(self, payload: Any) -> NodeLease:
        try:
            return NodeLease.model_validate(payload)
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
        try:
            with measure("ipamd"):
                return await ipamdhttp.request_json(
                    self._session,
                    method,
                    self._base_url + path,
                    label=f"{method} {path}",
                    params=params,
                    json_body=json_body,
                )
        except ipamdhttp.UnavailableError as error:
            raise IpamUnavailableError(self._base_url, error.reason) from error.__cause__
        except ipamdhttp.RejectedError as error:
            raise IpamRejectedError(error.status, error.body.code, error.body.message) from None
