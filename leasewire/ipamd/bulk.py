"""The simple requests of a batch, claimed with one multi-row insert.

Most lease requests name one pool and no address. For those, the allocation
writer first tries each pool's next-fit cursor for all of them at once: one
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` with one row per request, so
a batch of 64 requests costs one statement instead of 64. The unique indexes
still judge every row.

Two kinds of request go on to the normal path of ``allocate.py``, in the same
transaction. One is a request whose row inserts nothing, because the owner
already has a lease in the pool or another replica took the address. The
other is a request that the cursor cannot serve: an unknown pool, another
cluster's pool, a cursor past the end of a range or in use by this process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import DNSSpec, LeaseState, LeaseView, Owner, PodRef, RouteSpec
from leasewire.ipamd.addresses import address_key, key_value, make_address
from leasewire.ipamd.allocate import (
    INSERT_MANY,
    AllocatorState,
    Claim,
    PoolAllocator,
    lease_values,
    nth_usable,
)
from leasewire.ipamd.errors import IpamError
from leasewire.ipamd.models import Pool


@dataclass
class _PoolFacts:
    """Parts that every new lease view of one pool shares, built once per batch."""

    pool: Pool
    prefix: str
    routes: list[RouteSpec]
    dns: DNSSpec


def _facts(pool: Pool) -> _PoolFacts:
    return _PoolFacts(
        pool=pool,
        prefix=pool.cidr.rpartition("/")[2],
        routes=[RouteSpec.model_validate(route) for route in pool.routes],
        dns=DNSSpec.model_validate(pool.dns),
    )


def new_lease_view(facts: _PoolFacts, claim: Claim, key: bytes) -> LeaseView:
    """Build the view of a lease just inserted for ``claim`` at ``key``, as ``lease_view`` does."""
    pool = facts.pool
    request = claim.request
    address = make_address(pool.version, key_value(pool.version, key))
    return LeaseView(
        pool=pool.name,
        address=f"{address}/{facts.prefix}",
        gateway=pool.gateway,
        state=LeaseState.PENDING,
        owner=Owner(
            cluster=request.owner.cluster,
            containerID=request.owner.container_id,
            ifname=request.owner.ifname,
        ),
        pod=PodRef(namespace=request.pod.namespace, name=request.pod.name, uid=request.pod.uid),
        node=request.node,
        createdAt=claim.now.isoformat(),
        releasedAt=None,
        routes=facts.routes,
        dns=facts.dns,
        vlan=pool.vlan,
        network=request.network,
        mac=request.mac,
        expiresAt=claim.expires_at.isoformat(),
        boundAt=None,
        cooldownUntil=None,
        driver=None,
        options={},
        attach=None,
    )


async def claim_at_cursors(
    session: AsyncSession,
    state: AllocatorState,
    reserved: list[tuple[int, int]],
    claims: list[Claim],
) -> list[LeaseView | None]:
    """Insert a lease at its pool's cursor for each claim (simple requests only), in one statement.

    Returns, per claim, the view of its new lease, or None for the claims
    left to the normal path. Raises only what the database raises.
    """
    rows: list[dict[str, object]] = []
    tried: list[tuple[int, _PoolFacts, bytes] | None] = []
    facts_by_pool: dict[int, _PoolFacts] = {}
    for claim in claims:
        name = claim.request.pool
        assert name is not None
        allocator = PoolAllocator(session, state, reserved, claim)
        try:
            pool = await allocator.pool(name)
        except IpamError:
            tried.append(None)
            continue
        if pool.cluster is not None and pool.cluster != claim.request.owner.cluster:
            tried.append(None)
            continue
        layout = state.layout(pool)
        cursor = state.cursors.get(pool.id)
        if cursor is None and pool.cursor is not None:
            cursor = key_value(layout.version, pool.cursor)
        in_flight = state.in_flight.setdefault(pool.id, set())
        if cursor is None or cursor in in_flight or not layout.is_allocatable(cursor):
            tried.append(None)
            continue
        in_flight.add(cursor)
        reserved.append((pool.id, cursor))
        state.cursors[pool.id] = cursor + 1
        key = address_key(layout.version, cursor)
        facts = facts_by_pool.get(pool.id)
        if facts is None:
            facts = facts_by_pool[pool.id] = _facts(pool)
        rows.append(lease_values(pool, claim, key))
        tried.append((pool.id, facts, key))
    if not rows:
        return [None] * len(claims)

    statement = INSERT_MANY[session.get_bind().dialect.name]
    result = await session.execute(statement, rows)
    inserted = {(row.pool_id, row.address) for row in result}
    views: list[LeaseView | None] = []
    for claim, attempt in zip(claims, tried, strict=True):
        if attempt is None:
            views.append(None)
        elif (attempt[0], attempt[2]) in inserted:
            views.append(new_lease_view(attempt[1], claim, attempt[2]))
        else:
            # Most likely another replica is inserting a run of addresses here (a
            # repeated request is the other cause): move this process's cursor away.
            pool = attempt[1].pool
            layout = state.layout(pool)
            state.cursors[pool.id] = nth_usable(layout, random.randrange(layout.size))
            views.append(None)
    return views
