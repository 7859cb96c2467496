"""Typed keys of the state that the ipamd application keeps."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker


class PoolLocks:
    """One asyncio lock per pool name, kept only while some request uses it.

    Serializing allocations per pool within one process keeps concurrent
    requests from racing for the same candidate address. Correctness across
    processes and replicas comes from the database's unique indexes, not from
    these locks.
    """

    def __init__(self) -> None:
        # Weak values: a lock disappears once no request holds or waits for it,
        # so names of pools that do not exist cannot pile up.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def for_pool(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock


DATABASE_URL = web.AppKey("database_url", str)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[Any])
POOL_LOCKS = web.AppKey("pool_locks", PoolLocks)
