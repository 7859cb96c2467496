"""Wire models of ipamd's HTTP API, version 1.

ipamd validates every request body with these models, and the node daemon and
the CLI build their requests with them, so both sides agree on one contract.
Field names are the JSON names: the API speaks camelCase where the CNI world
does (``containerID``), and plain lowercase words elsewhere.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class LeaseState(StrEnum):
    """Lease state: pending until the pod is wired, bound while the pod holds
    the address, released once the address is given back."""

    PENDING = "pending"
    BOUND = "bound"
    RELEASED = "released"


class WireModel(BaseModel):
    # Unknown keys are rejected so that a misspelt field fails loudly instead of
    # being ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RangeSpec(WireModel):
    """Inclusive address range inside a pool's CIDR."""

    start: str
    end: str


class PoolCreate(WireModel):
    """Body of ``POST /v1/pools``."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    cidr: str
    gateway: str | None = None
    ranges: list[RangeSpec] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class PoolView(WireModel):
    """A pool as ipamd shows it, with its usage counts."""

    name: str
    cidr: str
    gateway: str | None
    ranges: list[RangeSpec]
    exclude: list[str]
    size: int
    allocated: int
    free: int


class Owner(WireModel):
    """Attachment that holds a lease: one interface of one container in one cluster."""

    cluster: str = Field(min_length=1)
    container_id: str = Field(alias="containerID", min_length=1)
    ifname: str = Field(min_length=1)


class PodRef(WireModel):
    namespace: str = ""
    name: str = ""
    uid: str = ""


class LeaseCreate(WireModel):
    """Body of ``POST /v1/leases``."""

    pool: str
    owner: Owner
    pod: PodRef = Field(default_factory=PodRef)
    node: str = ""
    address: str | None = None


class LeaseView(WireModel):
    """A lease as ipamd returns it. ``address`` carries the pool's prefix length
    (``10.0.0.5/24``) so that it can be configured on an interface as is."""

    pool: str
    address: str
    gateway: str | None
    state: LeaseState
    owner: Owner
    pod: PodRef
    node: str
    created_at: str = Field(alias="createdAt")
    released_at: str | None = Field(default=None, alias="releasedAt")


class ErrorBody(WireModel):
    """JSON body of every error response."""

    code: str
    message: str
    details: dict[str, object] | None = None
