"""Wire models of ipamd's HTTP API, version 1.

ipamd validates every request body with these models, and the node daemon and
the CLI build their requests with them, so both sides agree on one contract.
Field names are the JSON names: the API speaks camelCase where the CNI world
does (``containerID``), and plain lowercase words elsewhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

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


class ViewModel(BaseModel):
    # Answers are read leniently, so that a client keeps working when a newer
    # ipamd adds fields to an answer.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class RangeSpec(WireModel):
    """Inclusive address range inside a pool's CIDR."""

    start: str
    end: str


class RouteSpec(WireModel):
    """Route that a pod gets with its lease: destination CIDR and optional next hop."""

    dst: str
    gw: str | None = None


class DNSSpec(WireModel):
    """DNS settings that a pod gets with its lease, as in the CNI result's ``dns`` key."""

    nameservers: list[str] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class Selectors(WireModel):
    """Labels a request must carry for a pool to be chosen. Empty selectors match everything."""

    namespace_labels: dict[str, str] = Field(default_factory=dict, alias="namespaceLabels")
    node_labels: dict[str, str] = Field(default_factory=dict, alias="nodeLabels")


POOL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"


class PoolSpec(WireModel):
    """Everything of a pool except its name: the body of ``PUT /v1/pools/{name}``."""

    cidr: str
    gateway: str | None = None
    ranges: list[RangeSpec] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    routes: list[RouteSpec] = Field(default_factory=list)
    dns: DNSSpec = Field(default_factory=DNSSpec)
    cooldown_seconds: int = Field(default=30, ge=0, le=86400, alias="cooldownSeconds")
    priority: int = 0
    selectors: Selectors = Field(default_factory=Selectors)
    cluster: str | None = Field(default=None, min_length=1, max_length=253)
    vlan: int | None = Field(default=None, ge=1, le=4094)


class PoolUpsert(PoolSpec):
    """Body of ``PUT /v1/pools/{name}``: the name may be left out or repeat the path's."""

    name: str | None = None


class PoolCreate(PoolSpec):
    """Body of ``POST /v1/pools``."""

    name: str = Field(min_length=1, max_length=63, pattern=POOL_NAME_PATTERN)


class PoolView(ViewModel):
    """A pool as ipamd shows it, with its usage counts.

    ``allocated`` counts held (pending and bound) leases, ``cooling`` released
    leases whose address still rests, and ``free`` the addresses that the next
    allocation may take.
    """

    name: str
    cidr: str
    gateway: str | None
    ranges: list[RangeSpec]
    exclude: list[str]
    size: int
    allocated: int
    free: int
    routes: list[RouteSpec] = Field(default_factory=list)
    dns: DNSSpec = Field(default_factory=DNSSpec)
    cooldown_seconds: int = Field(default=30, alias="cooldownSeconds")
    priority: int = 0
    selectors: Selectors = Field(default_factory=Selectors)
    cluster: str | None = None
    vlan: int | None = None
    generation: int = 1
    pending: int = 0
    bound: int = 0
    cooling: int = 0


class Owner(WireModel):
    """Attachment that holds a lease: one interface of one container in one cluster."""

    cluster: str = Field(min_length=1)
    container_id: str = Field(alias="containerID", min_length=1)
    ifname: str = Field(min_length=1)


class PodRef(WireModel):
    namespace: str = ""
    name: str = ""
    uid: str = ""


class Family(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class LeaseCreate(WireModel):
    """Body of ``POST /v1/leases``.

    The pools come from ``pool``, else ``pools`` (one lease from each, all or
    none), else selection: for each of ``families`` the matching pool of the
    highest priority that has a free address.

    ``address`` or ``addresses`` (not both) request exact addresses, without
    a prefix length. Each one goes to the pool of the request whose usable
    addresses contain it, at most one per pool, and the other pools lease
    any free address. With selection, each requested address adds its family
    to ``families``, which then defaults to no family instead of ipv4.
    """

    pool: str | None = None
    pools: list[str] | None = Field(default=None, min_length=1)
    families: list[Family] | None = Field(default=None, min_length=1)
    namespace_labels: dict[str, str] = Field(default_factory=dict, alias="namespaceLabels")
    owner: Owner
    pod: PodRef = Field(default_factory=PodRef)
    node: str = ""
    address: str | None = None
    addresses: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Exact addresses without prefix length, at most one per pool of the request.",
    )
    network: str = Field(default="", max_length=253)
    mac: str | None = Field(default=None, max_length=64)


class AttachView(ViewModel):
    """Attach profile that applies to a lease's node."""

    profile: str | None = None
    driver: str
    options: dict[str, Any] = Field(default_factory=dict)


class LeaseView(ViewModel):
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
    routes: list[RouteSpec] = Field(default_factory=list)
    dns: DNSSpec = Field(default_factory=DNSSpec)
    vlan: int | None = None
    network: str = ""
    mac: str | None = None
    expires_at: str | None = Field(default=None, alias="expiresAt")
    bound_at: str | None = Field(default=None, alias="boundAt")
    cooldown_until: str | None = Field(default=None, alias="cooldownUntil")
    driver: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    attach: AttachView | None = None


class LeaseCreated(LeaseView):
    """Answer of ``POST /v1/leases``: the first lease at the top level, all in ``leases``."""

    leases: list[LeaseView]


class LeaseConfirm(WireModel):
    """Body of ``POST /v1/leases/confirm``: the owner is wired, with this driver and options."""

    owner: Owner
    driver: str = Field(min_length=1, max_length=64)
    options: dict[str, Any] = Field(default_factory=dict)


class LeaseList(ViewModel):
    leases: list[LeaseView]


class ReleasedLeases(ViewModel):
    """Answer of ``DELETE /v1/leases`` and ``POST /v1/leases/gc``."""

    released: list[LeaseView]


class Attachment(WireModel):
    container_id: str = Field(alias="containerID", min_length=1)
    ifname: str = Field(min_length=1)


class LeaseGC(WireModel):
    """Body of ``POST /v1/leases/gc``: every attachment still valid on one node for one network."""

    cluster: str = Field(min_length=1)
    node: str = Field(min_length=1)
    network: str = ""
    valid: list[Attachment]


class ErrorBody(ViewModel):
    """JSON body of every error response."""

    code: str
    message: str
    details: dict[str, object] | None = None


# Attach profiles and nodes: which attach driver the pods of a node get.

LABEL_MAP = dict[str, str]


class AttachProfileSpec(WireModel):
    """Body of ``PUT /v1/attach-profiles/{name}``."""

    node_selector: LABEL_MAP = Field(default_factory=dict, alias="nodeSelector")
    driver: str = Field(min_length=1, max_length=64)
    options: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0


class AttachProfileView(ViewModel):
    name: str
    node_selector: LABEL_MAP = Field(alias="nodeSelector")
    driver: str
    options: dict[str, Any]
    priority: int


class NodeSpec(WireModel):
    """Body of ``PUT /v1/nodes/{name}``."""

    cluster: str = Field(default="default", min_length=1, max_length=253)
    labels: LABEL_MAP = Field(default_factory=dict)


class NodeView(ViewModel):
    name: str
    cluster: str
    labels: LABEL_MAP
