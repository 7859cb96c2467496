"""Data functions for leases after allocation: views, listing, confirm, release, GC, expiry.

Every function takes the session first and never commits: the request
handler (or the background task) owns the transaction. Allocation itself
lives in ``allocate.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from leasewire.api import (
    DNSSpec,
    LeaseConfirm,
    LeaseState,
    LeaseView,
    Owner,
    PodRef,
    RouteSpec,
)
from leasewire.ipamd.addresses import key_value, make_address
from leasewire.ipamd.errors import LeaseNotFound
from leasewire.ipamd.models import HELD_SQL, Lease, Pool, utcnow

logger = logging.getLogger(__name__)

SWEEP_BATCH = 1000
"""Expired pending leases reclaimed per statement by one sweep."""


class OwnerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefix every log line with the owner key, so that one pod can be followed across daemons."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        owner = self.extra["owner"] if self.extra else "?"
        return f"[{owner}] {msg}", kwargs


def owner_logger(owner: Owner) -> OwnerLogger:
    return OwnerLogger(logger, {"owner": f"{owner.cluster}/{owner.container_id}/{owner.ifname}"})


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def lease_address(lease: Lease) -> str:
    """Return the lease's address with the pool's prefix length, e.g. ``10.0.0.5/24``."""
    pool = lease.pool
    address = make_address(pool.version, key_value(pool.version, lease.address))
    return f"{address}/{pool.cidr.rpartition('/')[2]}"


def lease_view(lease: Lease) -> LeaseView:
    pool = lease.pool
    return LeaseView(
        pool=pool.name,
        address=lease_address(lease),
        gateway=pool.gateway,
        state=lease.state,
        owner=Owner(cluster=lease.cluster, containerID=lease.container_id, ifname=lease.ifname),
        pod=PodRef(namespace=lease.pod_namespace, name=lease.pod_name, uid=lease.pod_uid),
        node=lease.node,
        createdAt=lease.created_at.isoformat(),
        releasedAt=_timestamp(lease.released_at),
        routes=[RouteSpec.model_validate(route) for route in pool.routes],
        dns=DNSSpec.model_validate(pool.dns),
        vlan=pool.vlan,
        network=lease.network,
        mac=lease.mac,
        expiresAt=_timestamp(lease.expires_at) if lease.state == LeaseState.PENDING else None,
        boundAt=_timestamp(lease.bound_at),
        cooldownUntil=_timestamp(lease.cooldown_until),
        driver=lease.driver,
        options=lease.options or {},
        # The handlers fill in the attach profile of the lease's node (profiles.with_attach).
        attach=None,
    )


def holder_name(lease: Lease) -> str:
    """Name the holder of a lease for people: the pod if known, else the container id."""
    if lease.pod_namespace and lease.pod_name:
        return f"pod {lease.pod_namespace}/{lease.pod_name}"
    return f"container {lease.container_id} ({lease.ifname})"


def holder_details(lease: Lease) -> dict[str, str]:
    """Describe the holder of a lease for an error's details."""
    return {
        "namespace": lease.pod_namespace,
        "name": lease.pod_name,
        "uid": lease.pod_uid,
        "containerID": lease.container_id,
        "ifname": lease.ifname,
        "address": lease_address(lease),
    }


@dataclass(frozen=True)
class LeaseFilter:
    """Conditions that a lease must all meet; None means "any"."""

    cluster: str | None = None
    container_id: str | None = None
    ifname: str | None = None
    pod_uid: str | None = None
    node: str | None = None
    network: str | None = None
    pool_id: int | None = None
    created_before: datetime | None = None

    def apply(self, statement: Select[Any]) -> Select[Any]:
        conditions = {
            Lease.cluster: self.cluster,
            Lease.container_id: self.container_id,
            Lease.ifname: self.ifname,
            Lease.pod_uid: self.pod_uid,
            Lease.node: self.node,
            Lease.network: self.network,
            Lease.pool_id: self.pool_id,
        }
        for column, value in conditions.items():
            if value is not None:
                statement = statement.where(column == value)
        if self.created_before is not None:
            statement = statement.where(Lease.created_at < self.created_before)
        return statement


async def read_leases(
    session: AsyncSession,
    where: LeaseFilter,
    *,
    states: Sequence[LeaseState] | None = None,
) -> list[Lease]:
    """List the leases that match ``where``, by default the held ones, in pool and address order."""
    statement = where.apply(select(Lease)).order_by(Lease.pool_id, Lease.address, Lease.id)
    if states is None:
        statement = statement.where(text(HELD_SQL))
    else:
        statement = statement.where(Lease.state.in_(states))
    return list((await session.execute(statement)).scalars().all())


def cooldown_end(pool: Pool, now: datetime) -> datetime | None:
    if pool.cooldown_seconds <= 0:
        return None
    return now + timedelta(seconds=pool.cooldown_seconds)


def mark_released(lease: Lease, now: datetime) -> None:
    lease.state = LeaseState.RELEASED
    lease.released_at = now
    lease.expires_at = None
    lease.cooldown_until = cooldown_end(lease.pool, now)


async def release_matching(session: AsyncSession, where: LeaseFilter) -> list[Lease]:
    """Release every held lease that matches ``where``. Returns the leases released now."""
    statement = where.apply(select(Lease)).where(text(HELD_SQL)).order_by(Lease.id)
    leases = list((await session.execute(statement.with_for_update(of=Lease))).scalars().all())
    now = utcnow()
    for lease in leases:
        mark_released(lease, now)
    await session.flush()
    for lease in leases:
        owner_logger(_owner_of(lease)).info(
            "lease released: %s in pool %s", lease_address(lease), lease.pool.name
        )
    return leases


async def release_invalid(
    session: AsyncSession,
    *,
    cluster: str,
    node: str,
    network: str,
    valid: Collection[tuple[str, str]],
) -> list[Lease]:
    """Release the held leases of one node and network whose (container id, ifname) is not valid."""
    where = LeaseFilter(cluster=cluster, node=node, network=network)
    statement = where.apply(select(Lease)).where(text(HELD_SQL)).order_by(Lease.id)
    leases = (await session.execute(statement.with_for_update(of=Lease))).scalars().all()
    stale = [lease for lease in leases if (lease.container_id, lease.ifname) not in valid]
    now = utcnow()
    for lease in stale:
        mark_released(lease, now)
        owner_logger(_owner_of(lease)).info(
            "lease released by GC of node %s, network %r: %s in pool %s",
            node,
            network,
            lease_address(lease),
            lease.pool.name,
        )
    await session.flush()
    return stale


async def confirm_leases(session: AsyncSession, request: LeaseConfirm) -> list[Lease]:
    """Mark the owner's held leases bound and record the driver. Raises LeaseNotFound if none.

    A pending lease past its expiry that the sweep has not reclaimed yet still
    blocks its address, so confirming it is safe and is allowed.
    """
    owner = request.owner
    where = LeaseFilter(cluster=owner.cluster, container_id=owner.container_id, ifname=owner.ifname)
    statement = where.apply(select(Lease)).where(text(HELD_SQL)).order_by(Lease.id)
    leases = list((await session.execute(statement.with_for_update(of=Lease))).scalars().all())
    if not leases:
        raise LeaseNotFound(
            f"no pending or bound lease for owner {owner.cluster}/{owner.container_id}/"
            f"{owner.ifname}; it may have expired before confirm: request a new lease",
            {"cluster": owner.cluster, "containerID": owner.container_id, "ifname": owner.ifname},
        )
    now = utcnow()
    log = owner_logger(owner)
    for lease in leases:
        if lease.state == LeaseState.PENDING:
            lease.state = LeaseState.BOUND
            lease.bound_at = now
            lease.expires_at = None
            lease.driver = request.driver
            lease.options = request.options
            log.info("lease bound: %s in pool %s", lease_address(lease), lease.pool.name)
    await session.flush()
    return leases


def _owner_of(lease: Lease) -> Owner:
    return Owner(cluster=lease.cluster, containerID=lease.container_id, ifname=lease.ifname)


async def reclaim_expired(
    session: AsyncSession, now: datetime, *, pool_id: int | None = None
) -> int:
    """Release pending leases whose expiry has passed, optionally of one pool. Returns how many."""
    statement = (
        select(Lease)
        .where(Lease.state == LeaseState.PENDING, Lease.expires_at <= now)
        .order_by(Lease.id)
        .limit(SWEEP_BATCH)
    )
    if pool_id is not None:
        statement = statement.where(Lease.pool_id == pool_id)
    leases = (await session.execute(statement.with_for_update(of=Lease))).scalars().all()
    for lease in leases:
        mark_released(lease, now)
        owner_logger(_owner_of(lease)).info(
            "pending lease expired unconfirmed: %s in pool %s",
            lease_address(lease),
            lease.pool.name,
        )
    await session.flush()
    return len(leases)


async def end_cooldowns(session: AsyncSession, now: datetime, *, pool_id: int | None = None) -> int:
    """Free the addresses of released leases whose cooldown has passed. Returns how many."""
    statement = (
        update(Lease)
        .where(Lease.cooldown_until.is_not(None), Lease.cooldown_until <= now)
        .values(cooldown_until=None)
    )
    if pool_id is not None:
        statement = statement.where(Lease.pool_id == pool_id)
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_old_released(session: AsyncSession, before: datetime) -> int:
    """Delete released leases that were released before ``before`` and no longer cool down."""
    result = await session.execute(
        delete(Lease).where(
            Lease.state == LeaseState.RELEASED,
            Lease.cooldown_until.is_(None),
            Lease.released_at < before,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
