"""Run the allocation code, written against AsyncSession, on one thread with a plain Session.

On SQLite every statement through aiosqlite costs several hand-offs between
the event loop and the driver's thread (one per cursor call), and
SQLAlchemy's async layer adds a greenlet switch on top. The allocation writer
therefore runs a whole batch (BEGIN, every request, COMMIT) on its own
thread with a synchronous Session on the same database file: one hand-off
per batch instead of about 17 per request.

``ThreadSession`` offers the few AsyncSession methods that the allocation
path uses. Each one runs the synchronous call at once. So a coroutine built
on it never suspends, and ``run_to_end`` can drive it without an event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.orm import Session, SessionTransaction

ResultT = TypeVar("ResultT")


class ThreadSession:
    """The AsyncSession methods of the allocation path, run synchronously on a Session."""

    def __init__(self, sync_session: Session) -> None:
        self.sync_session = sync_session
        self.info = sync_session.info

    async def execute(self, statement: Any, params: Any = None, **options: Any) -> Result[Any]:
        return self.sync_session.execute(statement, params, **options)

    async def scalar(self, statement: Any, params: Any = None, **options: Any) -> Any:
        return self.sync_session.scalar(statement, params, **options)

    async def scalars(self, statement: Any, params: Any = None, **options: Any) -> Any:
        return self.sync_session.scalars(statement, params, **options)

    async def flush(self) -> None:
        self.sync_session.flush()

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)

    def get_bind(self) -> Engine | Connection:
        return self.sync_session.get_bind()

    @contextlib.asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[SessionTransaction]:
        with self.sync_session.begin_nested() as savepoint:
            yield savepoint


class SuspendedError(RuntimeError):
    """A coroutine run by ``run_to_end`` waited for the event loop."""


def run_to_end(coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
    """Run a coroutine that never suspends to its end, without an event loop; return its result.

    Raises SuspendedError if it suspends: that means something in it waits for
    I/O through asyncio, which cannot work on the writer's thread.
    """
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: ResultT = stop.value
        return result
    coroutine.close()
    raise SuspendedError(
        "the allocation batch waited for the event loop on the writer's thread; "
        "every database call of the allocation path must go through ThreadSession"
    )
