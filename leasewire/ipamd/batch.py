"""Group commit of allocations: the requests that arrive together share one transaction.

``POST /v1/leases`` hands its request to the allocation writer of the process
and waits. The writer takes every request that is waiting, serves them one
after the other in one transaction and commits once; only then does each
request get its answer. So a lease is never acknowledged before its commit,
and the cost of BEGIN, COMMIT and the pool and profile reads is shared by
the whole batch. There is no added delay: while one batch runs, the next one
gathers, and a lone request is a batch of one.

A request that fails with a domain error (pool exhausted, address taken ...)
leaves nothing behind: a request that could write more than one row runs in a
SAVEPOINT that is rolled back, and the simple request (one named pool, no
exact address) writes its lease as its last step. Any other failure of a batch
(a deadlock between replicas, a lost connection) rolls the whole transaction
back, and each of its requests is then tried again alone, in a transaction of
its own, so that one failing request cannot fail the others.

Two things keep a batch cheap. The simple requests of a batch are first
claimed together, with one multi-row insert at the pools' next-fit cursors
(``bulk.py``). And on a SQLite file the whole batch runs on the writer's own
thread with a synchronous session (``threadsession.py``): one hand-off between
the event loop and the driver per batch instead of several per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import sessionmaker

from leasewire.api import LeaseCreate, LeaseView
from leasewire.ipamd.allocate import Claim, PoolAllocator, pending_expiry
from leasewire.ipamd.bulk import claim_at_cursors
from leasewire.ipamd.db import create_thread_engine
from leasewire.ipamd.errors import IpamError
from leasewire.ipamd.leases import lease_view
from leasewire.ipamd.models import utcnow
from leasewire.ipamd.profiles import with_attach
from leasewire.ipamd.selection import allocate_request
from leasewire.ipamd.state import ALLOCATOR, DATABASE_URL, SETTINGS, WRITE_GATE, transaction
from leasewire.ipamd.threadsession import ThreadSession, run_to_end

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

MAX_BATCH = 256
"""Requests served by one transaction at most, so that one commit never waits on too many."""


@dataclass(frozen=True)
class Allocation:
    """The answer to one lease request: its leases and whether one of them is new."""

    views: list[LeaseView]
    created: bool


@dataclass
class _Waiting:
    request: LeaseCreate
    future: asyncio.Future[Allocation]


def _is_simple(request: LeaseCreate) -> bool:
    """True if the request writes at most one row, as its last step (no SAVEPOINT needed)."""
    return (
        request.pool is not None
        and request.pools is None
        and request.address is None
        and request.addresses is None
    )


class AllocationWriter:
    """Serves lease requests in batches, one transaction per batch, one batch at a time."""

    def __init__(self, app: web.Application, thread: WriterThread | None = None) -> None:
        self._app = app
        self._thread = thread
        self._waiting: list[_Waiting] = []
        self._wakeup = asyncio.Event()
        self.batches = 0
        self.requests = 0

    @property
    def thread(self) -> WriterThread | None:
        """The writer's own thread (SQLite files only), else None."""
        return self._thread

    @property
    def thread_engine(self) -> Engine | None:
        """The synchronous engine of the writer's thread (SQLite files only), else None."""
        return None if self._thread is None else self._thread.engine

    async def allocate(self, request: LeaseCreate) -> Allocation:
        """Serve one request; returns once its leases are committed. Raises what it failed with."""
        future: asyncio.Future[Allocation] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(request, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._waiting:
                    batch = self._waiting[:MAX_BATCH]
                    del self._waiting[:MAX_BATCH]
                    await self._serve(batch)
        finally:
            for waiting in self._waiting:
                waiting.future.cancel()

    async def _serve(self, batch: list[_Waiting]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            outcomes = await self._run_batch(batch)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], error)
                return
            log.warning(
                "a batch of %d lease requests failed (%s: %s); trying each alone",
                len(batch),
                type(error).__name__,
                error,
            )
            for waiting in batch:
                await self._serve([waiting])
            return
        for waiting, outcome in zip(batch, outcomes, strict=True):
            _settle(waiting, outcome)

    async def _run_batch(self, batch: list[_Waiting]) -> list[Allocation | IpamError]:
        app = self._app
        now = utcnow()
        expires_at = pending_expiry(now, app[SETTINGS].pending_ttl_seconds)
        requests = [waiting.request for waiting in batch]
        with app[ALLOCATOR].reservations() as reserved:
            if self._thread is None:
                async with transaction(app) as session:
                    return await self._serve_requests(session, requests, now, expires_at, reserved)
            thread = self._thread
            async with app[WRITE_GATE].hold():
                return await asyncio.get_running_loop().run_in_executor(
                    thread.executor,
                    functools.partial(
                        thread.run, self._serve_requests, requests, now, expires_at, reserved
                    ),
                )

    async def _serve_requests(
        self,
        session: AsyncSession,
        requests: list[LeaseCreate],
        now: datetime,
        expires_at: datetime,
        reserved: list[tuple[int, int]],
    ) -> list[Allocation | IpamError]:
        """Serve ``requests`` in the open transaction of ``session``; return one outcome each."""
        state = self._app[ALLOCATOR]
        claims = [Claim(request, now, expires_at) for request in requests]
        simple = [index for index, request in enumerate(requests) if _is_simple(request)]
        quick: dict[int, LeaseView] = {}
        if len(simple) > 1:
            claimed = await claim_at_cursors(
                session, state, reserved, [claims[index] for index in simple]
            )
            quick = {index: view for index, view in zip(simple, claimed, strict=True) if view}
        results: list[tuple[list[LeaseView], bool] | IpamError] = []
        for index, request in enumerate(requests):
            if index in quick:
                results.append(([quick[index]], True))
                continue
            allocator = PoolAllocator(session, state, reserved, claims[index])
            try:
                if _is_simple(request):
                    leases, created = await allocate_request(allocator)
                else:
                    async with session.begin_nested():
                        leases, created = await allocate_request(allocator)
            except IpamError as error:
                results.append(error)
                continue
            results.append(([lease_view(lease) for lease in leases], created))
        # One read of the attach profiles (and nodes) for the whole batch.
        views = await with_attach(
            session,
            [view for result in results if isinstance(result, tuple) for view in result[0]],
        )
        outcomes: list[Allocation | IpamError] = []
        position = 0
        for result in results:
            if isinstance(result, IpamError):
                outcomes.append(result)
                continue
            count = len(result[0])
            outcomes.append(Allocation(views[position : position + count], result[1]))
            position += count
        return outcomes


class WriterThread:
    """The thread and synchronous SQLite engine on which the allocation writer runs its batches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipamd-writer")

    def run(self, serve: Callable[..., Coroutine[Any, Any, ResultT]], *args: object) -> ResultT:
        """On the writer's thread: run ``serve(session, *args)`` in one transaction, commit it."""
        with self.sessions.begin() as sync_session:
            # ThreadSession has the AsyncSession methods that the allocation path calls.
            session = cast(AsyncSession, ThreadSession(sync_session))
            return run_to_end(serve(session, *args))

    def close(self) -> None:
        self.executor.submit(self.engine.dispose).result()
        self.executor.shutdown()


async def in_transaction(
    app: web.Application,
    work: Callable[..., Coroutine[Any, Any, ResultT]],
    *args: object,
) -> ResultT:
    """Run ``work(session, *args)`` in one transaction and commit it; return its result.

    On a SQLite file the work runs on the allocation writer's thread, like an
    allocation batch and for the same reason. Measured by a client, a lease
    confirm or release takes about 2 ms there and about 3 ms through
    aiosqlite. ``work`` must then call only the session methods that
    ThreadSession offers, and must build its result before it returns,
    because the session closes with the transaction. Elsewhere it runs in an
    ordinary transaction of the event loop.
    """
    thread = app[WRITER].thread
    if thread is None:
        async with transaction(app) as session:
            return await work(session, *args)
    async with app[WRITE_GATE].hold():
        return await asyncio.get_running_loop().run_in_executor(
            thread.executor, functools.partial(thread.run, work, *args)
        )


def _settle(waiting: _Waiting, outcome: Allocation | BaseException) -> None:
    future = waiting.future
    if future.done():
        # The client went away, so its lease (if any) stays pending and expires unconfirmed.
        owner = waiting.request.owner
        log.info(
            "[%s/%s/%s] lease request finished after its client went away",
            owner.cluster,
            owner.container_id,
            owner.ifname,
        )
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


WRITER = web.AppKey("allocation_writer", AllocationWriter)


async def allocation_writer(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: run the allocation writer while the app runs."""
    engine = create_thread_engine(app[DATABASE_URL])
    thread = None if engine is None else WriterThread(engine)
    writer = app[WRITER] = AllocationWriter(app, thread)
    task = asyncio.create_task(writer.run(), name="ipamd-allocation-writer")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if thread is not None:
            await asyncio.to_thread(thread.close)
