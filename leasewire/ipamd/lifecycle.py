"""Background task of ipamd: expire pending leases, end cooldowns, forget old released leases.

Every replica runs the task. The statements are idempotent and each run is one
short transaction, so replicas running it at the same time only repeat work.
The task also stores this process's next-fit cursors in the pool rows, so that
a restarted ipamd continues the search where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from leasewire.ipamd.addresses import IPVersion, address_key
from leasewire.ipamd.leases import delete_old_released, end_cooldowns, reclaim_expired
from leasewire.ipamd.models import Pool, utcnow
from leasewire.ipamd.state import ALLOCATOR, SETTINGS, transaction

log = logging.getLogger(__name__)


async def sweep(app: web.Application) -> tuple[int, int, int]:
    """Run one pass. Returns how many leases expired, finished cooling down, were deleted."""
    settings = app[SETTINGS]
    now = utcnow()
    async with transaction(app) as session:
        expired = await reclaim_expired(session, now)
        cooled = await end_cooldowns(session, now)
        deleted = await delete_old_released(
            session, now - timedelta(seconds=settings.released_retention_seconds)
        )
    if expired or cooled or deleted:
        log.info(
            "sweep: %d pending lease(s) expired, %d cooldown(s) ended, %d old released lease(s) "
            "deleted",
            expired,
            cooled,
            deleted,
        )
    return expired, cooled, deleted


async def save_cursors(app: web.Application) -> None:
    """Store this process's next-fit cursors in the pool rows."""
    cursors = dict(app[ALLOCATOR].cursors)
    if not cursors:
        return
    async with transaction(app) as session:
        pools = {
            pool_id: version
            for pool_id, version in (
                await session.execute(
                    Pool.__table__.select()
                    .with_only_columns(Pool.id, Pool.ip_version)
                    .where(Pool.id.in_(cursors))
                )
            ).all()
        }
        for pool_id, value in cursors.items():
            version: IPVersion = 4 if pools.get(pool_id) == 4 else 6
            if pool_id not in pools or value >= 1 << (32 if version == 4 else 128):
                continue
            await session.execute(
                update(Pool).where(Pool.id == pool_id).values(cursor=address_key(version, value))
            )


async def _run(app: web.Application) -> None:
    interval = app[SETTINGS].sweep_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(app)
            await save_cursors(app)
        except (SQLAlchemyError, OSError) as error:
            log.warning("sweep failed, retrying in %.0f s: %s", interval, error)


async def lifecycle_task(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: run the sweep in the background while the app runs."""
    task = asyncio.create_task(_run(app), name="ipamd-sweep")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await save_cursors(app)
    except (SQLAlchemyError, OSError) as error:
        log.warning("failed to store the next-fit cursors at shutdown: %s", error)
