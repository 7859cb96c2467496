"""One lease request: the pools it names, or pool selection by labels, family and priority.

A request names one pool (``pool``), several (``pools``: one lease from each,
for example one IPv4 and one IPv6 pool), or none. With none, ipamd picks for
each requested family the pools whose selectors match the namespace labels
of the request and the labels of the node, highest priority first (ties in
name order), and moves to the next one while a pool is exhausted. All leases
of a request are written in the caller's one transaction: all or none.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import Family, LeaseCreate
from leasewire.ipamd.addresses import IPAddress, parse_address
from leasewire.ipamd.allocate import PoolAllocator
from leasewire.ipamd.errors import (
    InvalidRequest,
    NoPoolAvailable,
    PoolExhausted,
    PoolNotInScope,
)
from leasewire.ipamd.models import HELD_SQL, Lease, Pool
from leasewire.ipamd.nodes import read_node
from leasewire.ipamd.pools import read_pools

log = logging.getLogger(__name__)

_VERSIONS = {Family.IPV4: 4, Family.IPV6: 6}


async def read_node_labels(session: AsyncSession, cluster: str, node: str) -> dict[str, str]:
    """Return the labels of ``node`` in ``cluster``, or none when the node is unknown."""
    found = await read_node(session, cluster, node)
    return {} if found is None else dict(found.labels)


def _parse_requested(text_address: str) -> IPAddress:
    try:
        return parse_address(text_address)
    except ValueError:
        raise InvalidRequest(
            f"invalid field address = {text_address!r}: not an IP address "
            "(give the address without a prefix length)",
            {"field": "address", "value": text_address},
        ) from None


def _check_scope(pool: Pool, cluster: str) -> None:
    if pool.cluster is not None and pool.cluster != cluster:
        raise PoolNotInScope(
            f"pool {pool.name!r} belongs to cluster {pool.cluster!r}, not to the owner's "
            f"cluster {cluster!r}; use a pool of that cluster or a global pool",
            {"pool": pool.name, "cluster": pool.cluster},
        )


def _labels_missing(wanted: dict[str, str], labels: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in wanted.items() if labels.get(key) != value]


def skip_reason(
    pool: Pool, request: LeaseCreate, node_labels: dict[str, str], version: int
) -> str | None:
    """Return why selection passes over ``pool`` before trying it, or None if it matches."""
    if pool.version != version:
        return f"it is an IPv{pool.version} pool"
    if pool.cluster is not None and pool.cluster != request.owner.cluster:
        return f"it belongs to cluster {pool.cluster!r}"
    selectors = pool.selectors or {}
    missing = _labels_missing(selectors.get("namespaceLabels", {}), request.namespace_labels)
    if missing:
        return "the namespace lacks the labels " + ", ".join(missing)
    missing = _labels_missing(selectors.get("nodeLabels", {}), node_labels)
    if missing:
        return f"node {request.node!r} lacks the labels " + ", ".join(missing)
    return None


async def _read_owner_leases(session: AsyncSession, request: LeaseCreate) -> list[Lease]:
    owner = request.owner
    statement = select(Lease).where(
        Lease.cluster == owner.cluster,
        Lease.container_id == owner.container_id,
        Lease.ifname == owner.ifname,
        text(HELD_SQL),
    )
    return list((await session.execute(statement)).scalars().all())


async def _allocate_named(
    allocator: PoolAllocator, names: list[str], requested: IPAddress | None
) -> tuple[list[Lease], bool]:
    if len(set(names)) != len(names):
        raise InvalidRequest(
            f"invalid field pools = {names!r}: a pool is named twice; name each pool once",
            {"field": "pools", "value": names},
        )
    if requested is not None and len(names) > 1:
        raise InvalidRequest(
            "invalid request: address asks for one exact address, so name one pool, not "
            f"{len(names)}",
            {"field": "address", "value": str(requested)},
        )
    leases: list[Lease] = []
    created = False
    for name in names:
        pool = await allocator.pool(name)
        _check_scope(pool, allocator.claim.request.owner.cluster)
        lease, new = await allocator.allocate(pool, allocator.state.layout(pool), requested)
        leases.append(lease)
        created = created or new
    return leases, created


async def _allocate_selected(
    allocator: PoolAllocator, requested: IPAddress | None
) -> tuple[list[Lease], bool]:
    session = allocator.session
    request = allocator.claim.request
    families = request.families or [Family.IPV4]
    if requested is not None:
        families = [Family.IPV4 if requested.version == 4 else Family.IPV6]
    if len(set(families)) != len(families):
        raise InvalidRequest(
            f"invalid field families = {[str(f) for f in families]!r}: a family is named twice",
            {"field": "families", "value": [str(family) for family in families]},
        )

    held = await _read_owner_leases(session, request)
    pools = sorted(await read_pools(session), key=lambda pool: (-pool.priority, pool.name))
    node_labels = await read_node_labels(session, request.owner.cluster, request.node)

    leases: list[Lease] = []
    created = False
    for family in families:
        version = _VERSIONS[family]
        own = [lease for lease in held if lease.pool.version == version]
        if own:
            leases.append(own[0])
            continue
        considered: list[dict[str, str]] = []
        for pool in pools:
            reason = skip_reason(pool, request, node_labels, version)
            layout = allocator.state.layout(pool) if reason is None else None
            if layout is not None and requested is not None and requested not in layout.network:
                reason = f"the requested address {requested} is outside its CIDR {pool.cidr}"
            if reason is not None or layout is None:
                considered.append({"pool": pool.name, "reason": reason or ""})
                continue
            try:
                lease, new = await allocator.allocate(pool, layout, requested)
            except PoolExhausted:
                considered.append({"pool": pool.name, "reason": "it is exhausted"})
                continue
            leases.append(lease)
            created = created or new
            break
        else:
            raise _no_pool(family, considered)
    return leases, created


def _no_pool(family: Family, considered: list[dict[str, str]]) -> NoPoolAvailable:
    if considered:
        reasons = "; ".join(f"{item['pool']}: {item['reason']}" for item in considered)
        message = f"no {family} pool can serve this request. Pools considered: {reasons}"
    else:
        message = f"no {family} pool exists; create one with PUT /v1/pools/NAME"
    return NoPoolAvailable(
        message + ". Name a pool, change the labels or selectors, or add a pool",
        {"family": str(family), "considered": considered},
    )


async def allocate_request(allocator: PoolAllocator) -> tuple[list[Lease], bool]:
    """Serve one lease request. Returns its leases (one per pool or family), and if one is new."""
    request = allocator.claim.request
    requested = None if request.address is None else _parse_requested(request.address)
    if request.pool is not None and request.pools is not None:
        raise InvalidRequest(
            "invalid request: give either pool or pools, not both",
            {"field": "pools", "value": request.pools},
        )
    if request.pool is not None:
        return await _allocate_named(allocator, [request.pool], requested)
    if request.pools is not None:
        return await _allocate_named(allocator, request.pools, requested)
    return await _allocate_selected(allocator, requested)
