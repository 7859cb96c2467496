"""Data functions for pools: create, update, delete, usage counts.

Every function takes the session first and never commits: the request
handler owns the transaction. The spec rules (CIDR, ranges, excludes,
gateway) live in ``allocator.py`` and ``poolspec.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import DNSSpec, PoolSpec, PoolView, RangeSpec, RouteSpec, Selectors
from leasewire.ipamd.addresses import address_key, parse_network
from leasewire.ipamd.allocator import PoolLayout, subtract_intervals
from leasewire.ipamd.errors import (
    FieldImmutable,
    PoolExists,
    PoolInUse,
    PoolNotFound,
    PoolShrinkConflict,
)
from leasewire.ipamd.leases import holder_details, holder_name
from leasewire.ipamd.models import HELD_SQL, Lease, Pool, utcnow
from leasewire.ipamd.poolspec import (
    CanonicalSpec,
    canonical_spec,
    check_overlap,
    layout_of,
    normalize_dns,
    normalize_selectors,
)

log = logging.getLogger(__name__)

# How many holders an error names before it adds "and N more".
_HOLDERS_SHOWN = 10

__all__ = [
    "PoolCounts",
    "count_leases",
    "create_pool",
    "delete_pool",
    "layout_of",
    "pool_view",
    "read_pool",
    "read_pools",
    "require_pool",
    "upsert_pool",
]


@dataclass(frozen=True)
class PoolCounts:
    pending: int = 0
    bound: int = 0
    cooling: int = 0

    @property
    def held(self) -> int:
        return self.pending + self.bound


async def read_pool(session: AsyncSession, name: str) -> Pool | None:
    result = await session.execute(select(Pool).where(Pool.name == name))
    return result.scalar_one_or_none()


async def require_pool(session: AsyncSession, name: str) -> Pool:
    """Return the pool named ``name`` or raise PoolNotFound."""
    pool = await read_pool(session, name)
    if pool is None:
        raise PoolNotFound(name)
    return pool


async def read_pools(session: AsyncSession) -> Sequence[Pool]:
    result = await session.execute(select(Pool).order_by(Pool.name))
    return result.scalars().all()


async def count_leases(session: AsyncSession, pool_ids: Sequence[int]) -> dict[int, PoolCounts]:
    """Count the pending, bound and cooling leases of each pool in ``pool_ids``.

    A released lease counts as cooling only until its cooldown ends. The sweep
    clears ended cooldowns a few seconds later, but the allocator already
    reclaims such an address when it needs it.
    """
    if not pool_ids:
        return {}
    statement = (
        select(Lease.pool_id, Lease.state, func.count())
        .where(
            Lease.pool_id.in_(pool_ids),
            or_(text(HELD_SQL), Lease.cooldown_until > utcnow()),
        )
        .group_by(Lease.pool_id, Lease.state)
    )
    raw: dict[int, dict[str, int]] = {pool_id: {} for pool_id in pool_ids}
    for pool_id, state, count in await session.execute(statement):
        raw[pool_id][str(state)] = count
    return {
        pool_id: PoolCounts(
            pending=values.get("pending", 0),
            bound=values.get("bound", 0),
            cooling=values.get("released", 0),
        )
        for pool_id, values in raw.items()
    }


def pool_view(pool: Pool, counts: PoolCounts) -> PoolView:
    layout = layout_of(pool)
    selectors = pool.selectors or {}
    return PoolView(
        name=pool.name,
        cidr=pool.cidr,
        gateway=pool.gateway,
        ranges=[RangeSpec(start=start, end=end) for start, end in pool.ranges],
        exclude=list(pool.excludes),
        size=layout.size,
        allocated=counts.held,
        free=max(layout.size - counts.held - counts.cooling, 0),
        routes=[RouteSpec.model_validate(route) for route in pool.routes],
        dns=DNSSpec.model_validate(pool.dns),
        cooldownSeconds=pool.cooldown_seconds,
        priority=pool.priority,
        selectors=Selectors.model_validate(selectors),
        cluster=pool.cluster,
        vlan=pool.vlan,
        generation=pool.generation,
        pending=counts.pending,
        bound=counts.bound,
        cooling=counts.cooling,
    )


def _stored_spec(pool: Pool) -> CanonicalSpec:
    return CanonicalSpec(
        cidr=pool.cidr,
        gateway=pool.gateway,
        ranges=pool.ranges,
        excludes=pool.excludes,
        routes=pool.routes,
        dns=normalize_dns(pool.dns),
        cooldown_seconds=pool.cooldown_seconds,
        priority=pool.priority,
        selectors=normalize_selectors(pool.selectors),
        cluster=pool.cluster,
        vlan=pool.vlan,
    )


def _apply_spec(pool: Pool, spec: CanonicalSpec) -> None:
    pool.gateway = spec.gateway
    pool.ranges = spec.ranges
    pool.excludes = spec.excludes
    pool.routes = spec.routes
    pool.dns = spec.dns
    pool.cooldown_seconds = spec.cooldown_seconds
    pool.priority = spec.priority
    pool.selectors = spec.selectors
    pool.cluster = spec.cluster
    pool.vlan = spec.vlan


async def _insert_pool(
    session: AsyncSession, name: str, layout: PoolLayout, spec: CanonicalSpec
) -> Pool | None:
    """Insert a new pool. Returns None if another request created the name meanwhile."""
    pool = Pool(name=name, ip_version=layout.version, cidr=spec.cidr, cursor=None, generation=1)
    _apply_spec(pool, spec)
    try:
        async with session.begin_nested():
            session.add(pool)
    except IntegrityError:
        return None
    log.info("pool %s created: %s, %d usable addresses", name, spec.cidr, layout.size)
    return pool


async def _prepare(
    session: AsyncSession, name: str, spec: PoolSpec
) -> tuple[PoolLayout, CanonicalSpec]:
    layout, canonical = canonical_spec(spec)
    await check_overlap(session, name, layout, canonical.cluster)
    return layout, canonical


async def create_pool(session: AsyncSession, name: str, spec: PoolSpec) -> tuple[Pool, bool]:
    """Create a pool, or return the existing one if its spec is identical.

    Returns the pool and whether it was created. Raises InvalidPool for a spec
    that cannot be served, PoolOverlap for ranges that another pool of the same
    scope covers, and PoolExists for a different spec under the same name.
    """
    existing = await read_pool(session, name)
    if existing is None:
        layout, canonical = await _prepare(session, name, spec)
        pool = await _insert_pool(session, name, layout, canonical)
        if pool is not None:
            return pool, True
        existing = await require_pool(session, name)

    _layout, canonical = canonical_spec(spec)
    if _stored_spec(existing) != canonical:
        raise PoolExists(
            f"pool {name!r} already exists with a different spec (cidr {existing.cidr}, "
            f"gateway {existing.gateway or 'none'}, ranges {existing.ranges}, "
            f"exclude {existing.excludes}); "
            "change it with PUT /v1/pools/NAME, or delete it first, or choose another name",
            {"pool": name},
        )
    return existing, False


async def _check_shrink(
    session: AsyncSession, pool: Pool, old: PoolLayout, new: PoolLayout
) -> None:
    """Raise PoolShrinkConflict if held leases sit on addresses that the new layout drops."""
    removed = subtract_intervals(old.intervals, new.intervals)
    holders: list[Lease] = []
    for interval in removed:
        statement = (
            select(Lease)
            .where(
                Lease.pool_id == pool.id,
                text(HELD_SQL),
                Lease.address >= address_key(old.version, interval.first),
                Lease.address <= address_key(old.version, interval.last),
            )
            .order_by(Lease.address)
            .limit(_HOLDERS_SHOWN + 1 - len(holders))
        )
        holders.extend((await session.execute(statement)).scalars().all())
        if len(holders) > _HOLDERS_SHOWN:
            break
    if not holders:
        return
    shown = ", ".join(
        f"{holder_name(lease)} ({holder_details(lease)['address']})"
        for lease in holders[:_HOLDERS_SHOWN]
    )
    more = " and more" if len(holders) > _HOLDERS_SHOWN else ""
    raise PoolShrinkConflict(
        f"pool {pool.name!r}: the new ranges, excludes or gateway leave out addresses that are "
        f"still leased, to {shown}{more}; release those leases first or keep their addresses "
        "in the pool",
        {"pool": pool.name, "holders": [holder_details(lease) for lease in holders]},
    )


async def upsert_pool(session: AsyncSession, name: str, spec: PoolSpec) -> tuple[Pool, bool]:
    """Create the pool or update it to ``spec``. Returns the pool and whether it was created.

    The CIDR cannot change (FieldImmutable). An update never drops or moves a
    lease: it is refused with PoolShrinkConflict while a held lease sits on an
    address that the new spec leaves out. Each change adds one to the generation.
    """
    existing = await read_pool(session, name)
    if existing is None:
        layout, canonical = await _prepare(session, name, spec)
        pool = await _insert_pool(session, name, layout, canonical)
        if pool is not None:
            return pool, True
        existing = await require_pool(session, name)

    try:
        cidr = str(parse_network(spec.cidr))
    except ValueError:
        cidr = spec.cidr
    if cidr != existing.cidr:
        raise FieldImmutable(
            f"pool {name!r}: cidr cannot change from {existing.cidr} to {spec.cidr}, "
            "because it would move the pool's addresses under its leases; "
            "create a new pool, or delete this one first",
            {"pool": name, "field": "cidr", "value": spec.cidr, "current": existing.cidr},
        )
    layout, canonical = canonical_spec(spec)
    if _stored_spec(existing) == canonical:
        return existing, False

    await check_overlap(session, name, layout, canonical.cluster)
    await _check_shrink(session, existing, layout_of(existing), layout)
    _apply_spec(existing, canonical)
    existing.generation += 1
    existing.updated_at = utcnow()
    await session.flush()
    log.info(
        "pool %s updated to generation %d: %d usable addresses",
        name,
        existing.generation,
        layout.size,
    )
    return existing, False


async def delete_pool(session: AsyncSession, name: str) -> Pool:
    """Delete a pool and its released leases. Raises PoolInUse while it holds leases."""
    pool = await require_pool(session, name)
    holders = (
        (
            await session.execute(
                select(Lease)
                .where(Lease.pool_id == pool.id, text(HELD_SQL))
                .order_by(Lease.address)
                .limit(_HOLDERS_SHOWN + 1)
            )
        )
        .scalars()
        .all()
    )
    if holders:
        allocated = (await count_leases(session, [pool.id]))[pool.id].held
        names = [holder_name(lease) for lease in holders[:_HOLDERS_SHOWN]]
        more = f" and {allocated - _HOLDERS_SHOWN} more" if allocated > _HOLDERS_SHOWN else ""
        raise PoolInUse(
            f"pool {name!r} still holds {allocated} lease(s), held by {', '.join(names)}{more}; "
            "release them (DELETE /v1/leases) before deleting the pool",
            {
                "pool": name,
                "allocated": allocated,
                "holders": [holder_details(lease) for lease in holders[:_HOLDERS_SHOWN]],
            },
        )

    await session.execute(delete(Lease).where(Lease.pool_id == pool.id))
    await session.delete(pool)
    log.info("pool %s deleted", name)
    return pool
