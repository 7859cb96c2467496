"""Data functions for leases: allocate, release, list.

Every function takes the session first and never commits: the request
handler owns the transaction. The database decides who wins an address: the
insert of a lease is guarded by the partial unique indexes on held leases,
and a conflict means "taken, try the next candidate".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping, Sequence
from contextlib import aclosing
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import LeaseCreate, LeaseState, LeaseView, Owner, PodRef
from leasewire.ipamd.addresses import (
    IPAddress,
    IPVersion,
    address_key,
    key_value,
    make_address,
    parse_address,
)
from leasewire.ipamd.allocator import PoolLayout, next_fit_segments, skip_taken
from leasewire.ipamd.errors import (
    AddressNotAllocatable,
    AddressTaken,
    AllocationConflict,
    InvalidRequest,
    OwnerHoldsOtherAddress,
    PoolExhausted,
)
from leasewire.ipamd.models import HELD_SQL, Lease, Pool, utcnow
from leasewire.ipamd.pools import holder_name

logger = logging.getLogger(__name__)

SCAN_BATCH = 256
"""Held addresses read per query while looking for a gap. The next-fit cursor
usually points at a free address, so the first batch nearly always has the gap."""

MAX_CLAIM_ATTEMPTS = 16
"""Inserts tried per request before giving up with allocation_conflict. Only
another writer on the same database (another replica) makes an insert fail."""


class OwnerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefix every log line with the owner key, so that one pod can be followed across daemons."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        owner = self.extra["owner"] if self.extra else "?"
        return f"[{owner}] {msg}", kwargs


def owner_logger(owner: Owner) -> OwnerLogger:
    return OwnerLogger(logger, {"owner": f"{owner.cluster}/{owner.container_id}/{owner.ifname}"})


def lease_view(lease: Lease) -> LeaseView:
    pool = lease.pool
    address = make_address(pool.version, key_value(pool.version, lease.address))
    prefixlen = pool.cidr.rpartition("/")[2]
    return LeaseView(
        pool=pool.name,
        address=f"{address}/{prefixlen}",
        gateway=pool.gateway,
        state=lease.state,
        owner=Owner(cluster=lease.cluster, containerID=lease.container_id, ifname=lease.ifname),
        pod=PodRef(namespace=lease.pod_namespace, name=lease.pod_name, uid=lease.pod_uid),
        node=lease.node,
        createdAt=lease.created_at.isoformat(),
        releasedAt=None if lease.released_at is None else lease.released_at.isoformat(),
    )


async def read_held_lease(session: AsyncSession, pool: Pool, owner: Owner) -> Lease | None:
    statement = select(Lease).where(
        Lease.pool_id == pool.id,
        Lease.cluster == owner.cluster,
        Lease.container_id == owner.container_id,
        Lease.ifname == owner.ifname,
        text(HELD_SQL),
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def read_held_lease_at(session: AsyncSession, pool: Pool, key: bytes) -> Lease | None:
    statement = select(Lease).where(Lease.pool_id == pool.id, Lease.address == key, text(HELD_SQL))
    return (await session.execute(statement)).scalar_one_or_none()


async def read_held_addresses(
    session: AsyncSession, pool: Pool, first: int, last: int, *, limit: int
) -> list[int]:
    """Return the held addresses of ``pool`` in ``first..last``, sorted, at most ``limit``.

    One range scan on the partial unique index (pool_id, address).
    """
    version = pool.version
    statement = (
        select(Lease.address)
        .where(
            Lease.pool_id == pool.id,
            text(HELD_SQL),
            Lease.address >= address_key(version, first),
            Lease.address <= address_key(version, last),
        )
        .order_by(Lease.address)
        .limit(limit)
    )
    keys = (await session.execute(statement)).scalars().all()
    return [key_value(version, key) for key in keys]


async def free_candidates(
    session: AsyncSession, pool: Pool, layout: PoolLayout
) -> AsyncGenerator[int, None]:
    """Yield free addresses of ``pool`` in next-fit order, starting at the pool's cursor.

    Each segment of the usable intervals is walked with batched range queries
    over the held addresses until a gap appears. After a yield the walk goes on
    from the next address, so a caller whose insert lost a race takes the next value.
    """
    version = layout.version
    cursor = None if pool.cursor is None else key_value(version, pool.cursor)
    for segment in next_fit_segments(layout.intervals, cursor):
        candidate = segment.first
        while candidate <= segment.last:
            taken = await read_held_addresses(
                session, pool, candidate, segment.last, limit=SCAN_BATCH
            )
            candidate, found = skip_taken(candidate, taken)
            if not found and len(taken) == SCAN_BATCH:
                continue
            if candidate > segment.last:
                break
            yield candidate
            candidate += 1


async def _insert_lease(
    session: AsyncSession, pool: Pool, request: LeaseCreate, key: bytes
) -> Lease | None:
    """Insert a bound lease on ``key``. Returns None if a unique index rejected it."""
    now = utcnow()
    lease = Lease(
        pool=pool,
        address=key,
        state=LeaseState.BOUND,
        cluster=request.owner.cluster,
        container_id=request.owner.container_id,
        ifname=request.owner.ifname,
        pod_namespace=request.pod.namespace,
        pod_name=request.pod.name,
        pod_uid=request.pod.uid,
        node=request.node,
        created_at=now,
        # NOTE: leases go straight to bound until the node daemon confirms
        # pending leases; then this becomes PENDING and bound_at moves to confirm.
        bound_at=now,
    )
    try:
        # The savepoint keeps the request's transaction usable after a conflict.
        async with session.begin_nested():
            session.add(lease)
    except IntegrityError:
        return None
    return lease


def _next_cursor(version: IPVersion, value: int) -> bytes | None:
    """Return the key where the next search starts, or None (the start) after the last address."""
    if value + 1 >= 1 << (32 if version == 4 else 128):
        return None
    return address_key(version, value + 1)


async def claim_first_free(
    session: AsyncSession,
    pool: Pool,
    request: LeaseCreate,
    candidates: AsyncIterator[int],
) -> tuple[Lease, bool]:
    """Insert a lease on the first candidate that the database accepts.

    Returns the lease and whether it was created. If the owner's own lease
    appears meanwhile (a concurrent repeat of the same request), that lease is
    returned instead. Raises PoolExhausted when the candidates run out.
    """
    log = owner_logger(request.owner)
    version = pool.version
    attempts = 0
    async for value in candidates:
        attempts += 1
        key = address_key(version, value)
        lease = await _insert_lease(session, pool, request, key)
        if lease is not None:
            # The cursor only speeds up the next search, so last writer wins is fine.
            await session.execute(
                update(Pool).where(Pool.id == pool.id).values(cursor=_next_cursor(version, value))
            )
            return lease, True

        existing = await read_held_lease(session, pool, request.owner)
        if existing is not None:
            return existing, False
        log.info(
            "address %s in pool %s was taken by another writer (attempt %d of %d), trying the next",
            make_address(version, value),
            pool.name,
            attempts,
            MAX_CLAIM_ATTEMPTS,
        )
        if attempts >= MAX_CLAIM_ATTEMPTS:
            raise AllocationConflict(
                f"pool {pool.name!r}: {attempts} candidate addresses were taken by other writers "
                "during this request; retry the request",
                {"pool": pool.name, "attempts": attempts},
            )

    raise PoolExhausted(
        f"pool {pool.name!r} ({pool.cidr}) is exhausted: all of its addresses are leased; "
        "release leases or add a pool",
        {"pool": pool.name},
    )


def _parse_requested(text_address: str) -> IPAddress:
    try:
        return parse_address(text_address)
    except ValueError:
        raise InvalidRequest(
            f"invalid field address = {text_address!r}: not an IP address "
            "(give the address without a prefix length)",
            {"field": "address", "value": text_address},
        ) from None


async def _claim_requested(
    session: AsyncSession, pool: Pool, layout: PoolLayout, request: LeaseCreate, address: IPAddress
) -> tuple[Lease, bool]:
    reason = layout.why_not_allocatable(address)
    if reason is not None:
        raise AddressNotAllocatable(
            f"address {address} cannot be leased from pool {pool.name!r}: {reason}",
            {"pool": pool.name, "address": str(address)},
        )

    key = address_key(layout.version, int(address))
    lease = await _insert_lease(session, pool, request, key)
    if lease is not None:
        return lease, True

    # A concurrent repeat of this same request may have won the address.
    existing = await read_held_lease(session, pool, request.owner)
    if existing is not None and existing.address == key:
        return existing, False
    holder = await read_held_lease_at(session, pool, key)
    name = "another owner" if holder is None else holder_name(holder)
    raise AddressTaken(
        f"address {address} in pool {pool.name!r} is already leased to {name}; "
        "release that lease first or request another address",
        {"pool": pool.name, "address": str(address), "holder": name},
    )


async def allocate_lease(
    session: AsyncSession, pool: Pool, layout: PoolLayout, request: LeaseCreate
) -> tuple[Lease, bool]:
    """Lease an address of ``pool`` to the request's owner, or return the owner's lease.

    Returns the lease and whether it was created. With ``request.address`` the
    lease is on exactly that address.
    """
    log = owner_logger(request.owner)
    requested = None if request.address is None else _parse_requested(request.address)

    existing = await read_held_lease(session, pool, request.owner)
    if existing is not None:
        held = make_address(layout.version, key_value(layout.version, existing.address))
        if requested is not None and requested != held:
            raise OwnerHoldsOtherAddress(
                f"owner already holds {held} in pool {pool.name!r}, not the requested "
                f"{requested}; release that lease first (DELETE /v1/leases)",
                {"pool": pool.name, "address": str(held)},
            )
        log.debug("owner already holds %s in pool %s", held, pool.name)
        return existing, False

    if requested is not None:
        lease, created = await _claim_requested(session, pool, layout, request, requested)
    else:
        async with aclosing(free_candidates(session, pool, layout)) as candidates:
            lease, created = await claim_first_free(session, pool, request, candidates)
    if created:
        log.info("lease bound: %s in pool %s", lease_view(lease).address, pool.name)
    return lease, created


async def release_leases(session: AsyncSession, owner: Owner) -> list[Lease]:
    """Release every held lease of ``owner`` in every pool. Returns the leases released now."""
    statement = select(Lease).where(
        Lease.cluster == owner.cluster,
        Lease.container_id == owner.container_id,
        Lease.ifname == owner.ifname,
        text(HELD_SQL),
    )
    leases = list((await session.execute(statement)).scalars().all())
    now = utcnow()
    for lease in leases:
        lease.state = LeaseState.RELEASED
        lease.released_at = now
    await session.flush()
    log = owner_logger(owner)
    for lease in leases:
        log.info("lease released: %s in pool %s", lease_view(lease).address, lease.pool.name)
    return leases


async def read_leases(
    session: AsyncSession,
    *,
    pool: Pool | None = None,
    node: str | None = None,
    states: Sequence[LeaseState] | None = None,
) -> list[Lease]:
    """List leases, by default the held ones, optionally of one pool or one node."""
    statement = select(Lease).order_by(Lease.pool_id, Lease.address, Lease.id)
    if states is None:
        statement = statement.where(text(HELD_SQL))
    else:
        statement = statement.where(Lease.state.in_(states))
    if pool is not None:
        statement = statement.where(Lease.pool_id == pool.id)
    if node is not None:
        statement = statement.where(Lease.node == node)
    return list((await session.execute(statement)).scalars().all())
