"""Typed keys of the state that the ipamd application keeps, and its transaction helper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from leasewire.ipamd.allocate import AllocatorState
from leasewire.ipamd.metrics import Metrics


@dataclass(frozen=True)
class IpamSettings:
    """Lifecycle settings of one ipamd process."""

    pending_ttl_seconds: float = 120.0
    """How long a pending lease waits for confirm before it stops holding its address."""
    sweep_interval_seconds: float = 5.0
    """Seconds between two runs of the task that expires pending leases and ends cooldowns."""
    released_retention_seconds: float = 7 * 86400.0
    """How long a released lease stays as a record after its cooldown, for audits and listings."""


class WriteGate:
    """Lets one transaction at a time into SQLite, none waiting on PostgreSQL.

    SQLite has one writer, and every ipamd transaction takes the write lock at
    BEGIN (see ``leasewire.ipamd.db``). Queueing on an asyncio lock is fair and
    cheap, while queueing on SQLite's busy handler sleeps in steps of up to 100 ms.
    """

    def __init__(self, serial: bool) -> None:
        self._lock = asyncio.Lock() if serial else None

    def hold(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._lock is None:
            return contextlib.nullcontext()
        return self._lock


DATABASE_URL = web.AppKey("database_url", str)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[Any])
WRITE_GATE = web.AppKey("write_gate", WriteGate)
ALLOCATOR = web.AppKey("allocator", AllocatorState)
SETTINGS = web.AppKey("settings", IpamSettings)
METRICS = web.AppKey("metrics", Metrics)


@contextlib.asynccontextmanager
async def transaction(app: web.Application) -> AsyncIterator[AsyncSession]:
    """Open one transaction: commit when the block ends, roll back on an exception."""
    async with app[WRITE_GATE].hold(), app[SESSIONMAKER].begin() as session:
        yield session


SCHEMA_HEAD = web.AppKey("schema_head", str)
