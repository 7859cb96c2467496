"""Data functions for pools.

Every function takes the session first and never commits: the request
handler owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import PoolCreate, PoolView, RangeSpec
from leasewire.ipamd.allocator import PoolLayout, build_layout
from leasewire.ipamd.errors import PoolExists, PoolInUse, PoolNotFound
from leasewire.ipamd.models import HELD_SQL, Lease, Pool

log = logging.getLogger(__name__)

# How many holders a pool_in_use error names before it adds "and N more".
_HOLDERS_SHOWN = 10


def layout_of(pool: Pool) -> PoolLayout:
    """Rebuild the layout of a stored pool. Its spec was validated when it was created."""
    return build_layout(
        cidr=pool.cidr,
        gateway=pool.gateway,
        ranges=[(start, end) for start, end in pool.ranges],
        exclude=pool.excludes,
    )


def _canonical_spec(layout: PoolLayout) -> tuple[str, str | None, list[list[str]], list[str]]:
    return (
        str(layout.network),
        None if layout.gateway is None else str(layout.gateway),
        [[str(start), str(end)] for start, end in layout.ranges],
        [exclude.text for exclude in layout.excludes],
    )


def _stored_spec(pool: Pool) -> tuple[str, str | None, list[list[str]], list[str]]:
    return (pool.cidr, pool.gateway, pool.ranges, pool.excludes)


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


async def count_held_leases(session: AsyncSession, pool_ids: Sequence[int]) -> dict[int, int]:
    """Count the held (pending or bound) leases of each pool in ``pool_ids``."""
    if not pool_ids:
        return {}
    statement = (
        select(Lease.pool_id, func.count())
        .where(Lease.pool_id.in_(pool_ids), text(HELD_SQL))
        .group_by(Lease.pool_id)
    )
    counts = {pool_id: 0 for pool_id in pool_ids}
    for pool_id, count in await session.execute(statement):
        counts[pool_id] = count
    return counts


def pool_view(pool: Pool, allocated: int) -> PoolView:
    layout = layout_of(pool)
    return PoolView(
        name=pool.name,
        cidr=pool.cidr,
        gateway=pool.gateway,
        ranges=[RangeSpec(start=start, end=end) for start, end in pool.ranges],
        exclude=list(pool.excludes),
        size=layout.size,
        allocated=allocated,
        free=layout.size - allocated,
    )


async def create_pool(session: AsyncSession, spec: PoolCreate) -> tuple[Pool, bool]:
    """Create a pool, or return the existing one if its spec is identical.

    Returns the pool and whether it was created. Raises InvalidPool for a spec
    that cannot be served and PoolExists for a different spec under the same name.
    """
    layout = build_layout(
        cidr=spec.cidr,
        gateway=spec.gateway,
        ranges=[(item.start, item.end) for item in spec.ranges],
        exclude=spec.exclude,
    )
    cidr, gateway, ranges, excludes = _canonical_spec(layout)

    existing = await read_pool(session, spec.name)
    if existing is None:
        pool = Pool(
            name=spec.name,
            ip_version=layout.version,
            cidr=cidr,
            gateway=gateway,
            ranges=ranges,
            excludes=excludes,
            cursor=None,
        )
        try:
            async with session.begin_nested():
                session.add(pool)
        except IntegrityError:
            # Another request created the same name between the read and the insert.
            existing = await require_pool(session, spec.name)
        else:
            log.info("pool %s created: %s, %d usable addresses", spec.name, cidr, layout.size)
            return pool, True

    if _stored_spec(existing) != (cidr, gateway, ranges, excludes):
        raise PoolExists(
            f"pool {spec.name!r} already exists with a different spec (cidr {existing.cidr}, "
            f"gateway {existing.gateway}, ranges {existing.ranges}, exclude {existing.excludes}); "
            "delete it first or choose another name",
            {"pool": spec.name},
        )
    return existing, False


async def delete_pool(session: AsyncSession, name: str) -> None:
    """Delete a pool and its released leases. Raises PoolInUse while it holds leases."""
    pool = await require_pool(session, name)
    holders = (
        await session.execute(
            select(Lease)
            .where(Lease.pool_id == pool.id, text(HELD_SQL))
            .order_by(Lease.address)
            .limit(_HOLDERS_SHOWN + 1)
        )
    ).scalars()
    names = [holder_name(lease) for lease in holders]
    if names:
        allocated = (await count_held_leases(session, [pool.id]))[pool.id]
        shown = ", ".join(names[:_HOLDERS_SHOWN])
        more = f" and {allocated - _HOLDERS_SHOWN} more" if allocated > _HOLDERS_SHOWN else ""
        raise PoolInUse(
            f"pool {name!r} still holds {allocated} lease(s), held by {shown}{more}; "
            "release them (DELETE /v1/leases) before deleting the pool",
            {"pool": name, "allocated": allocated, "holders": names[:_HOLDERS_SHOWN]},
        )

    await session.execute(delete(Lease).where(Lease.pool_id == pool.id))
    await session.delete(pool)
    log.info("pool %s deleted", name)


def holder_name(lease: Lease) -> str:
    """Name the holder of a lease for people: the pod if known, else the container id."""
    if lease.pod_namespace and lease.pod_name:
        return f"pod {lease.pod_namespace}/{lease.pod_name}"
    return f"container {lease.container_id} ({lease.ifname})"
