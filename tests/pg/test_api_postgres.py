"""ipamd's API behaviour suites of tests/unit, run again against the private PostgreSQL server.

The unit modules are loaded from their files and their tests are collected
here too; the ``client`` fixture below replaces theirs, so the same tests run
on PostgreSQL. Tests about SQLite itself (its file, its query plans) stay out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from leasewire.ipamd.app import create_app
from leasewire.ipamd.db import upgrade_schema
from leasewire.ipamd.models import Base
from leasewire.ipamd.state import ENGINE, SCHEMA_HEAD

UNIT_DIR = Path(__file__).parent.parent / "unit"
SQLITE_ONLY = {
    "test_database_directory_created",
    "test_free_address_query_uses_partial_index",
    "test_state_survives_restart",
    "test_migration_matches_models",
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pg_suite_{name}", UNIT_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


for _suite in ("test_ipamd_api", "test_ipamd_lifecycle"):
    _module = _load(_suite)
    for _name, _value in vars(_module).items():
        if _name.startswith("test_") and callable(_value) and _name not in SQLITE_ONLY:
            globals()[f"{_name}_{_suite.removeprefix('test_ipamd_')}"] = _value


@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(create_app(pg_url))) as test_client:
        yield test_client


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migration_matches_models_postgres(pg_url: str) -> None:
    await upgrade_schema(pg_url)
    await upgrade_schema(pg_url)
    async with (
        TestClient(TestServer(create_app(pg_url))) as test_client,
        test_client.app[ENGINE].connect() as connection,
    ):
        diff = await connection.run_sync(_schema_diff)
        version = (
            await connection.execute(text("SELECT version_num FROM alembic_version"))
        ).scalar()
    assert diff == []
    assert version == test_client.app[SCHEMA_HEAD]
