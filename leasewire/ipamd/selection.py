"""One lease request: the pools it names, or pool selection by labels, family and priority.

A request names one pool (``pool``), several (``pools``: one lease from each,
for example one IPv4 and one IPv6 pool), or none. With none, ipamd picks for
each requested family the pools whose selectors match the namespace labels
of the request and the labels of the node, highest priority first (ties in
name order), and moves to the next one while a pool is exhausted. A requested
exact address goes to the pool that can lease it: one of the named pools, or
with selection a matching pool of its family. All leases of a request are
written in the caller's one transaction: all or none.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import Family, LeaseCreate
from leasewire.ipamd.addresses import IPAddress, parse_address
from leasewire.ipamd.allocate import PoolAllocator
from leasewire.ipamd.allocator import PoolLayout
from leasewire.ipamd.errors import (
    AddressNotAllocatable,
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


def _parse_requested(field: str, text_address: str) -> IPAddress:
    try:
        return parse_address(text_address)
    except ValueError:
        raise InvalidRequest(
            f"invalid field {field} = {text_address!r}: not an IP address "
            "(give the address without a prefix length)",
            {"field": field, "value": text_address},
        ) from None


def requested_addresses(request: LeaseCreate) -> list[IPAddress]:
    """Parse the exact addresses of ``request`` (``address`` or ``addresses``), in request order."""
    if request.address is not None and request.addresses is not None:
        raise InvalidRequest(
            "invalid request: give either address or addresses, not both. "
            "Put every requested address in addresses",
            {"fields": ["address", "addresses"]},
        )
    if request.addresses is None:
        if request.address is None:
            return []
        return [_parse_requested("address", request.address)]
    addresses: list[IPAddress] = []
    for text_address in request.addresses:
        address = _parse_requested("addresses", text_address)
        if address in addresses:
            raise InvalidRequest(
                f"invalid field addresses = {request.addresses!r}: {address} is requested "
                "twice; request each address once",
                {"field": "addresses", "value": request.addresses},
            )
        addresses.append(address)
    return addresses


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


def _assign_addresses(
    pools: list[Pool], layouts: list[PoolLayout], requested: list[IPAddress]
) -> dict[int, IPAddress]:
    """Map each requested address to the index of the one pool whose usable addresses contain it.

    Raises AddressNotAllocatable for an address that no pool can lease, and
    InvalidRequest when two addresses fall into one pool.
    """
    assigned: dict[int, IPAddress] = {}
    for address in requested:
        reasons = [layout.why_not_allocatable(address) for layout in layouts]
        fitting = [index for index, reason in enumerate(reasons) if reason is None]
        if not fitting:
            raise _not_in_pools(address, pools, reasons)
        index = fitting[0]
        other = assigned.get(index)
        if other is not None:
            raise InvalidRequest(
                f"invalid request: addresses {other} and {address} are both in pool "
                f"{pools[index].name!r}, and a request leases one address per pool; "
                "request one address per pool",
                {"field": "addresses", "pool": pools[index].name},
            )
        assigned[index] = address
    return assigned


def _not_in_pools(
    address: IPAddress, pools: list[Pool], reasons: list[str | None]
) -> AddressNotAllocatable:
    if len(pools) == 1:
        message = f"address {address} cannot be leased from pool {pools[0].name!r}: {reasons[0]}"
    else:
        per_pool = "; ".join(
            f"pool {pool.name!r}: {reason}" for pool, reason in zip(pools, reasons, strict=True)
        )
        message = (
            f"address {address} cannot be leased from any pool of this request ({per_pool}); "
            "request an address that one of these pools can lease, or add its pool"
        )
    details: dict[str, object] = {"address": str(address), "pools": [p.name for p in pools]}
    if len(pools) == 1:
        details["pool"] = pools[0].name
    return AddressNotAllocatable(message, details)


async def _allocate_named(
    allocator: PoolAllocator, names: list[str], requested: list[IPAddress]
) -> tuple[list[Lease], bool]:
    if len(set(names)) != len(names):
        raise InvalidRequest(
            f"invalid field pools = {names!r}: a pool is named twice; name each pool once",
            {"field": "pools", "value": names},
        )
    pools: list[Pool] = []
    for name in names:
        pool = await allocator.pool(name)
        _check_scope(pool, allocator.claim.request.owner.cluster)
        pools.append(pool)
    layouts = [allocator.state.layout(pool) for pool in pools]
    if len(pools) == 1 and len(requested) == 1:
        # The allocator checks the address itself, after it looks for the owner's
        # lease: an owner that holds another address gets a conflict (409).
        assigned = {0: requested[0]}
    else:
        assigned = _assign_addresses(pools, layouts, requested)

    leases: list[Lease] = []
    created = False
    for index, (pool, layout) in enumerate(zip(pools, layouts, strict=True)):
        lease, new = await allocator.allocate(pool, layout, assigned.get(index))
        leases.append(lease)
        created = created or new
    return leases, created


def _families(request: LeaseCreate, requested: list[IPAddress]) -> list[Family]:
    """Return the families to lease: ``families``, then those of the requested addresses."""
    if request.families is not None and len(set(request.families)) != len(request.families):
        names = [str(family) for family in request.families]
        raise InvalidRequest(
            f"invalid field families = {names!r}: a family is named twice",
            {"field": "families", "value": names},
        )
    by_family: dict[Family, IPAddress] = {}
    for address in requested:
        family = Family.IPV4 if address.version == 4 else Family.IPV6
        other = by_family.setdefault(family, address)
        if other != address:
            raise InvalidRequest(
                f"invalid request: addresses {other} and {address} are both {family}, and pool "
                "selection leases one address per family; request one address per family, "
                "or name the pools",
                {"field": "addresses", "family": str(family)},
            )
    if request.families is None:
        return list(by_family) or [Family.IPV4]
    return [*request.families, *(family for family in by_family if family not in request.families)]


async def _allocate_selected(
    allocator: PoolAllocator, requested: list[IPAddress]
) -> tuple[list[Lease], bool]:
    session = allocator.session
    request = allocator.claim.request
    families = _families(request, requested)

    held = await _read_owner_leases(session, request)
    pools = sorted(await read_pools(session), key=lambda pool: (-pool.priority, pool.name))
    node_labels = await read_node_labels(session, request.owner.cluster, request.node)

    leases: list[Lease] = []
    created = False
    for family in families:
        version = _VERSIONS[family]
        address = next((item for item in requested if item.version == version), None)
        own = [lease for lease in held if lease.pool.version == version]
        if own:
            if address is not None:
                # Returns the held lease, or raises if it is on another address.
                pool = own[0].pool
                lease, _ = await allocator.allocate(pool, allocator.state.layout(pool), address)
                leases.append(lease)
            else:
                leases.append(own[0])
            continue
        considered: list[dict[str, str]] = []
        for pool in pools:
            reason = skip_reason(pool, request, node_labels, version)
            layout = allocator.state.layout(pool) if reason is None else None
            if layout is not None and address is not None:
                problem = layout.why_not_allocatable(address)
                if problem is not None:
                    reason = f"the requested address {address} cannot be leased: {problem}"
            if reason is not None or layout is None:
                considered.append({"pool": pool.name, "reason": reason or ""})
                continue
            try:
                lease, new = await allocator.allocate(pool, layout, address)
            except PoolExhausted:
                considered.append({"pool": pool.name, "reason": "it is exhausted"})
                continue
            leases.append(lease)
            created = created or new
            break
        else:
            raise _no_pool(family, considered, address)
    return leases, created


def _no_pool(
    family: Family, considered: list[dict[str, str]], address: IPAddress | None
) -> NoPoolAvailable:
    subject = "this request" if address is None else f"the requested address {address}"
    if considered:
        reasons = "; ".join(f"{item['pool']}: {item['reason']}" for item in considered)
        message = f"no {family} pool can serve {subject}. Pools considered: {reasons}"
    else:
        message = f"no {family} pool exists; create one with PUT /v1/pools/NAME"
    details: dict[str, object] = {"family": str(family), "considered": considered}
    if address is not None:
        details["address"] = str(address)
    return NoPoolAvailable(
        message + ". Name a pool, change the labels or selectors, or add a pool", details
    )


async def allocate_request(allocator: PoolAllocator) -> tuple[list[Lease], bool]:
    """Serve one lease request. Returns its leases (one per pool or family), and if one is new.

    A request that fails may already have written leases for its other pools,
    so the caller runs every request that can write more than one row in a
    SAVEPOINT and rolls it back on failure.
    """
    request = allocator.claim.request
    requested = requested_addresses(request)
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
