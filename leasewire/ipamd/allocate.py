"""Allocation of one lease out of one pool: next-fit search, database-judged claim.

The database decides who wins an address: a lease is inserted with
``ON CONFLICT DO NOTHING`` against the partial unique indexes (one blocking
lease per pool address, one held lease per owner per pool), and an insert that
inserts nothing means "taken, try the next candidate". Several ipamd replicas
on one PostgreSQL database therefore never hand out an address twice.

Each process keeps, per pool, a next-fit cursor and the set of candidates that
its own open transactions are trying, so that concurrent requests in one
process try different addresses instead of queueing on one unique-index
entry. Both are hints: losing them (a restart) costs a longer search, never a
wrong lease.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import LeaseCreate, LeaseState
from leasewire.ipamd.addresses import IPAddress, address_key, key_value, make_address
from leasewire.ipamd.allocator import PoolLayout, next_fit_segments, skip_taken
from leasewire.ipamd.errors import (
    AddressNotAllocatable,
    AddressTaken,
    AllocationConflict,
    OwnerHoldsOtherAddress,
    PoolExhausted,
)
from leasewire.ipamd.leases import end_cooldowns, holder_name, owner_logger, reclaim_expired
from leasewire.ipamd.models import BLOCKING_SQL, HELD_SQL, Lease, Pool
from leasewire.ipamd.pools import require_pool
from leasewire.ipamd.poolspec import layout_of

logger = logging.getLogger(__name__)

SCAN_BATCH = 256
"""Blocking addresses read per query while looking for a gap. The next-fit
cursor usually points at a free address, so the first batch nearly always has the gap."""

LAYOUT_CACHE_SIZE = 1024
"""Pool layouts kept per process; the cache starts over when it is full."""

MAX_CLAIM_ATTEMPTS = 16
"""Inserts tried per request before giving up with allocation_conflict. Only
another writer on the same database (another replica) makes an insert fail."""


@dataclass
class AllocatorState:
    """Per-process hints of the allocator: next-fit cursors and in-flight candidates per pool id."""

    cursors: dict[int, int] = field(default_factory=dict)
    in_flight: dict[int, set[int]] = field(default_factory=dict)
    layouts: dict[tuple[object, ...], PoolLayout] = field(default_factory=dict)

    def layout(self, pool: Pool) -> PoolLayout:
        """Return the layout of ``pool``, built once per stored spec.

        The key holds the whole address spec, not only the id and generation:
        SQLite may give a deleted pool's id to the next pool it creates.
        """
        key = (
            pool.id,
            pool.generation,
            pool.cidr,
            pool.gateway,
            tuple(tuple(pair) for pair in pool.ranges),
            tuple(pool.excludes),
        )
        layout = self.layouts.get(key)
        if layout is None:
            if len(self.layouts) >= LAYOUT_CACHE_SIZE:
                self.layouts.clear()
            layout = self.layouts[key] = layout_of(pool)
        return layout

    @contextmanager
    def reservations(self) -> Iterator[list[tuple[int, int]]]:
        """Collect the candidates a request tries; they stay reserved until the block ends.

        Wrap the whole transaction, commit included, so that no other request of
        this process tries an address before this one's insert is visible.
        """
        taken: list[tuple[int, int]] = []
        try:
            yield taken
        finally:
            for pool_id, value in taken:
                values = self.in_flight.get(pool_id)
                if values is not None:
                    values.discard(value)
                    if not values:
                        del self.in_flight[pool_id]


@dataclass(frozen=True)
class Claim:
    """Everything needed to insert one lease, apart from the address."""

    request: LeaseCreate
    now: datetime
    expires_at: datetime


def lease_values(pool: Pool, claim: Claim, key: bytes) -> dict[str, object]:
    request = claim.request
    return {
        "pool_id": pool.id,
        "address": key,
        "state": LeaseState.PENDING.value,
        "cluster": request.owner.cluster,
        "container_id": request.owner.container_id,
        "ifname": request.owner.ifname,
        "pod_namespace": request.pod.namespace,
        "pod_name": request.pod.name,
        "pod_uid": request.pod.uid,
        "node": request.node,
        "network": request.network,
        "mac": request.mac,
        "created_at": claim.now,
        "expires_at": claim.expires_at,
    }


# One statement per dialect, built once, so that SQLAlchemy compiles it once
# and each allocation only binds its values. Without a conflict target, DO
# NOTHING covers every unique index, the partial ones included.
_LEASE_TABLE = cast(Table, Lease.__table__)
_INSERT = {
    "postgresql": postgresql.insert(_LEASE_TABLE)
    .on_conflict_do_nothing()
    .returning(_LEASE_TABLE.c.id),
    "sqlite": sqlite.insert(_LEASE_TABLE).on_conflict_do_nothing().returning(_LEASE_TABLE.c.id),
}
# The same for many rows at once (``bulk.py``): RETURNING names each inserted row by its key.
_KEY_COLUMNS = (_LEASE_TABLE.c.pool_id, _LEASE_TABLE.c.address)
INSERT_MANY = {
    "postgresql": postgresql.insert(_LEASE_TABLE).on_conflict_do_nothing().returning(*_KEY_COLUMNS),
    "sqlite": sqlite.insert(_LEASE_TABLE).on_conflict_do_nothing().returning(*_KEY_COLUMNS),
}


async def insert_lease(session: AsyncSession, pool: Pool, claim: Claim, key: bytes) -> Lease | None:
    """Insert a pending lease on ``key``. Returns None if a unique index rejected it."""
    statement = _INSERT[session.get_bind().dialect.name]
    result = await session.execute(statement, lease_values(pool, claim, key))
    lease_id = result.scalar_one_or_none()
    if lease_id is None:
        return None
    request = claim.request
    # Built from the inserted values instead of read back: one round trip less.
    return Lease(
        id=lease_id,
        pool_id=pool.id,
        pool=pool,
        address=key,
        state=LeaseState.PENDING,
        cluster=request.owner.cluster,
        container_id=request.owner.container_id,
        ifname=request.owner.ifname,
        pod_namespace=request.pod.namespace,
        pod_name=request.pod.name,
        pod_uid=request.pod.uid,
        node=request.node,
        network=request.network,
        mac=request.mac,
        driver=None,
        options=None,
        created_at=claim.now,
        bound_at=None,
        released_at=None,
        expires_at=claim.expires_at,
        cooldown_until=None,
    )


async def read_held_lease(session: AsyncSession, pool: Pool, claim: Claim) -> Lease | None:
    owner = claim.request.owner
    statement = select(Lease).where(
        Lease.pool_id == pool.id,
        Lease.cluster == owner.cluster,
        Lease.container_id == owner.container_id,
        Lease.ifname == owner.ifname,
        text(HELD_SQL),
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def read_blocking_lease_at(session: AsyncSession, pool: Pool, key: bytes) -> Lease | None:
    statement = select(Lease).where(
        Lease.pool_id == pool.id, Lease.address == key, text(BLOCKING_SQL)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def read_blocking_addresses(
    session: AsyncSession, pool: Pool, first: int, last: int, *, limit: int
) -> list[int]:
    """Return the blocked addresses of ``pool`` in ``first..last``, sorted, at most ``limit``.

    One range scan on the partial unique index (pool_id, address).
    """
    version = pool.version
    statement = (
        select(Lease.address)
        .where(
            Lease.pool_id == pool.id,
            text(BLOCKING_SQL),
            Lease.address >= address_key(version, first),
            Lease.address <= address_key(version, last),
        )
        .order_by(Lease.address)
        .limit(limit)
    )
    keys = (await session.execute(statement)).scalars().all()
    return [key_value(version, key) for key in keys]


async def free_candidates(
    session: AsyncSession, pool: Pool, layout: PoolLayout, start: int | None, skip: set[int]
) -> AsyncGenerator[int, None]:
    """Yield free addresses of ``pool`` in next-fit order from ``start``, leaving out ``skip``.

    Each segment of the usable intervals is walked with batched range queries
    over the blocked addresses until a gap appears. After a yield the walk goes
    on from the next address, so a caller whose insert lost a race takes the next value.
    """
    for segment in next_fit_segments(layout.intervals, start):
        candidate = segment.first
        while candidate <= segment.last:
            taken = await read_blocking_addresses(
                session, pool, candidate, segment.last, limit=SCAN_BATCH
            )
            candidate, found = skip_taken(candidate, taken)
            if not found and len(taken) == SCAN_BATCH:
                continue
            if candidate > segment.last:
                break
            if candidate not in skip:
                yield candidate
            candidate += 1


def nth_usable(layout: PoolLayout, index: int) -> int:
    """Return the usable address at position ``index`` (0-based) of the pool."""
    for interval in layout.intervals:
        if index < interval.size:
            return interval.first + index
        index -= interval.size
    return layout.intervals[0].first


def _refused_request(pool: Pool, address: IPAddress, reason: str) -> AddressNotAllocatable:
    return AddressNotAllocatable(
        f"address {address} cannot be leased from pool {pool.name!r}: {reason}",
        {"pool": pool.name, "address": str(address)},
    )


class PoolAllocator:
    """Allocate leases out of pools within one transaction, using this process's hints."""

    def __init__(
        self,
        session: AsyncSession,
        state: AllocatorState,
        reserved: list[tuple[int, int]],
        claim: Claim,
    ) -> None:
        self.session = session
        self.state = state
        self.reserved = reserved
        self.claim = claim
        self.pools: dict[str, Pool] = session.info.setdefault("pools", {})

    async def pool(self, name: str) -> Pool:
        """Return the pool named ``name``, read once per transaction. Raises PoolNotFound."""
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = await require_pool(self.session, name)
        return pool

    async def allocate(
        self, pool: Pool, layout: PoolLayout, requested: IPAddress | None
    ) -> tuple[Lease, bool]:
        """Lease an address of ``pool`` to the owner, or return the owner's lease in it.

        Returns the lease and whether it was created. Reclaims expired pending
        leases and ended cooldowns of the pool once before giving up.
        """
        for last_try in (False, True):
            try:
                if requested is not None:
                    return await self._claim_requested(pool, layout, requested)
                return await self._claim_next(pool, layout)
            except (PoolExhausted, AddressTaken):
                if last_try or not await self._reclaim(pool):
                    raise
        raise AssertionError("unreachable")

    async def _reclaim(self, pool: Pool) -> bool:
        now = self.claim.now
        expired = await reclaim_expired(self.session, now, pool_id=pool.id)
        cooled = await end_cooldowns(self.session, now, pool_id=pool.id)
        if expired or cooled:
            logger.info(
                "pool %s: reclaimed %d expired pending lease(s) and %d ended cooldown(s)",
                pool.name,
                expired,
                cooled,
            )
        return bool(expired or cooled)

    async def _existing(self, pool: Pool, layout: PoolLayout) -> Lease | None:
        return await read_held_lease(self.session, pool, self.claim)

    async def _claim_next(self, pool: Pool, layout: PoolLayout) -> tuple[Lease, bool]:
        version = layout.version
        cursor = self.state.cursors.get(pool.id)
        if cursor is None and pool.cursor is not None:
            cursor = key_value(version, pool.cursor)
        in_flight = self.state.in_flight.setdefault(pool.id, set())
        if cursor is not None and cursor not in in_flight and layout.is_allocatable(cursor):
            # The cursor nearly always points at a free address: try it without
            # a range scan and let the unique indexes judge. A miss falls back to the scan.
            in_flight.add(cursor)
            self.reserved.append((pool.id, cursor))
            self.state.cursors[pool.id] = cursor + 1
            lease = await insert_lease(self.session, pool, self.claim, address_key(version, cursor))
            if lease is not None:
                return lease, True
            existing = await self._existing(pool, layout)
            if existing is not None:
                self.state.cursors[pool.id] = cursor
                return existing, False
        attempts = 0
        start = cursor
        walking = True
        while walking:
            # One walk over the free addresses from ``start``. A lost race ends it and
            # starts a new walk at a random place, because walking on would follow the
            # other writer through the run of addresses that it is inserting.
            walking = False
            candidates = free_candidates(self.session, pool, layout, start, in_flight)
            async with aclosing(candidates):
                async for value in candidates:
                    attempts += 1
                    in_flight.add(value)
                    self.reserved.append((pool.id, value))
                    self.state.cursors[pool.id] = value + 1
                    key = address_key(version, value)
                    lease = await insert_lease(self.session, pool, self.claim, key)
                    if lease is not None:
                        return lease, True

                    existing = await self._existing(pool, layout)
                    if existing is not None:
                        # A repeated request: the candidate is still free for the next one.
                        self.state.cursors[pool.id] = value
                        return existing, False
                    owner_logger(self.claim.request.owner).info(
                        "address %s in pool %s was taken by another writer (attempt %d of %d)",
                        make_address(version, value),
                        pool.name,
                        attempts,
                        MAX_CLAIM_ATTEMPTS,
                    )
                    if attempts >= MAX_CLAIM_ATTEMPTS:
                        raise AllocationConflict(
                            f"pool {pool.name!r}: {attempts} candidate addresses were taken by "
                            "other writers during this request; retry the request",
                            {"pool": pool.name, "attempts": attempts},
                        )
                    start = nth_usable(layout, random.randrange(layout.size))
                    self.state.cursors[pool.id] = start
                    walking = True
                    break

        existing = await self._existing(pool, layout)
        if existing is not None:
            return existing, False
        raise PoolExhausted(
            f"pool {pool.name!r} ({pool.cidr}) is exhausted: all of its {layout.size} addresses "
            "are leased or cooling down after release; release leases or add a pool",
            {"pool": pool.name, "size": layout.size},
        )

    async def _claim_requested(
        self, pool: Pool, layout: PoolLayout, address: IPAddress
    ) -> tuple[Lease, bool]:
        existing = await self._existing(pool, layout)
        key = address_key(layout.version, int(address))
        if existing is not None:
            if existing.address != key:
                held = make_address(layout.version, key_value(layout.version, existing.address))
                raise OwnerHoldsOtherAddress(
                    f"owner already has {held} in pool {pool.name!r}, not the requested "
                    f"{address}; release that lease first (DELETE /v1/leases)",
                    {"pool": pool.name, "address": str(held)},
                )
            return existing, False

        reason = layout.why_not_allocatable(address)
        if reason is not None:
            raise _refused_request(pool, address, reason)

        # A request for one exact address may take it during its cooldown: the
        # cooldown keeps dynamic allocation away, and this client asked for it.
        await self.session.execute(
            update(Lease)
            .where(
                Lease.pool_id == pool.id,
                Lease.address == key,
                Lease.state == LeaseState.RELEASED,
                Lease.cooldown_until.is_not(None),
            )
            .values(cooldown_until=None)
        )
        lease = await insert_lease(self.session, pool, self.claim, key)
        if lease is not None:
            return lease, True

        # A concurrent repeat of this same request may have won the address.
        existing = await self._existing(pool, layout)
        if existing is not None and existing.address == key:
            return existing, False
        holder = await read_blocking_lease_at(self.session, pool, key)
        name = "another owner" if holder is None else holder_name(holder)
        details: dict[str, object] = {"pool": pool.name, "address": str(address), "holder": name}
        if holder is not None:
            details["pod"] = {
                "namespace": holder.pod_namespace,
                "name": holder.pod_name,
                "uid": holder.pod_uid,
            }
        raise AddressTaken(
            f"address {address} in pool {pool.name!r} is already leased to {name}; "
            "release that lease first or request another address",
            details,
        )


def pending_expiry(now: datetime, ttl_seconds: float) -> datetime:
    return now + timedelta(seconds=ttl_seconds)
