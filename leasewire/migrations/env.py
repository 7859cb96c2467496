"""Alembic environment of ipamd.

ipamd runs the upgrade itself (``leasewire ipamd`` on start, ``leasewire ipamd
migrate``) and hands its open connection over in ``config.attributes``. The
``alembic`` command line works too: it passes only ``sqlalchemy.url``, and this
file then opens its own async engine.

Each revision runs in its own transaction, so a failed upgrade stops after the
last revision that completed. SQLite runs in batch mode, because it can alter
a table only by copying it.
"""

from __future__ import annotations

import asyncio
import logging

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from leasewire.ipamd.db import create_engine
from leasewire.ipamd.models import Base

log = logging.getLogger("leasewire.migrations")

# Any constant works as long as every ipamd replica uses the same one.
_POSTGRESQL_MIGRATION_LOCK = 0x6C77_6970_616D_64  # "lwipamd"


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        # SQLite runs DDL inside transactions, and ipamd's engine emits BEGIN
        # itself (see leasewire.ipamd.db), so Alembic may rely on it as on PostgreSQL.
        transactional_ddl=True,
        compare_type=True,
    )


def _run_on_connection(connection: Connection) -> None:
    _configure(connection)
    if connection.dialect.name != "postgresql":
        with context.begin_transaction():
            context.run_migrations()
        return

    # Several replicas may start at once against one PostgreSQL database. The
    # session advisory lock lets one of them upgrade while the others wait and
    # then find the schema current.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _POSTGRESQL_MIGRATION_LOCK})
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(
            text("SELECT pg_advisory_unlock(:key)"), {"key": _POSTGRESQL_MIGRATION_LOCK}
        )


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on_connection)
            await connection.commit()
    finally:
        await engine.dispose()


def _run_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_on_connection(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database to migrate: set sqlalchemy.url in the Alembic configuration "
            "or run 'leasewire ipamd --database URL migrate'"
        )
    if context.is_offline_mode():
        _run_offline(url)
    else:
        asyncio.run(_run_with_own_engine(url))


_main()
