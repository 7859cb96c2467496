"""Database engine and schema upgrades for ipamd.

ipamd speaks to SQLite (aiosqlite, the embedded default) or PostgreSQL
(asyncpg) through one SQLAlchemy async engine per process.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as create_sync_engine_from_url
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

# Alembic (1.20 here) logs one INFO line per built-in plugin when it is first
# imported, on every start of ipamd, so its plugin logger must be quieted first.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite connection waits for another connection's write lock, in
milliseconds, before failing with "database is locked". Writes take a few
milliseconds, so 5 s only runs out when something holds the lock abnormally long."""


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def ensure_sqlite_directory(url: URL) -> None:
    """Create the parent directory of a SQLite database file if it is missing."""
    database = url.database
    if not _is_sqlite(url) or not database or database == ":memory:":
        return
    if database.startswith("file:"):
        # A URI filename; SQLite parses it, and its directory is left to the user.
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    # Python 3.11's sqlite3 module emits BEGIN only before DML and never before
    # SELECT or SAVEPOINT, which breaks the savepoint around each lease insert.
    # So the driver's own transaction handling is switched off and SQLAlchemy
    # emits BEGIN itself. IMMEDIATE takes the write lock at the start: a
    # transaction that reads free addresses and then inserts cannot fail halfway
    # with SQLITE_BUSY because another connection wrote in between.
    # NOTE: read-only requests take the write lock too, so SQLite serves one
    # request at a time. That suits one node; many nodes belong on PostgreSQL.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers proceed while one writer writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL syncs at checkpoints instead of at every commit.
        # A committed transaction survives a crash of ipamd (the WAL is in the
        # page cache), but may be lost if the machine loses power.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(database_url: str) -> AsyncEngine:
    """Create the async engine, with WAL, a busy timeout and foreign keys on SQLite."""
    url = make_url(database_url)
    ensure_sqlite_directory(url)
    engine = create_async_engine(url, pool_pre_ping=not _is_sqlite(url))
    if _is_sqlite(url):
        _configure_sqlite(engine.sync_engine)
    return engine


def create_thread_engine(database_url: str) -> Engine | None:
    """Create a synchronous engine on the same SQLite file, for the allocation writer's thread.

    Returns None for PostgreSQL and for an in-memory SQLite database (a second
    engine would see another, empty database); those allocate through the async engine.
    """
    url = make_url(database_url)
    if not _is_sqlite(url) or not url.database or url.database == ":memory:":
        return None
    if "mode=memory" in url.database or url.query.get("mode") == "memory":
        return None
    engine = create_sync_engine_from_url(url.set(drivername="sqlite+pysqlite"))
    _configure_sqlite(engine)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    # Objects stay readable after commit: handlers build their response from them.
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str | None = None) -> Config:
    """Build the Alembic configuration in code, so that no alembic.ini is needed at run time."""
    config = Config()
    script_location = resources.files("leasewire") / "migrations"
    config.set_main_option("script_location", str(script_location))
    if database_url is not None:
        # configparser treats % as interpolation; URL-escaped passwords contain it.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _upgrade_connection(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Upgrade the schema behind ``engine`` to the newest revision."""
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade_connection)
        await connection.commit()
    log.info("database schema is at the newest revision (%s)", engine.url.render_as_string())


async def upgrade_schema(database_url: str) -> None:
    """Upgrade the schema of the database at ``database_url`` to the newest revision."""
    engine = create_engine(database_url)
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()
