"""The requested-addresses API tests of tests/unit, run again against the private PostgreSQL server.

The ``client`` fixture below replaces the SQLite one of the unit module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from leasewire.ipamd.app import create_app

_SPEC = importlib.util.spec_from_file_location(
    "pg_suite_static_addresses", Path(__file__).parent.parent / "unit" / "test_static_addresses.py"
)
assert _SPEC is not None
assert _SPEC.loader is not None
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)

for _name, _value in vars(_MODULE).items():
    if _name.startswith("test_") and callable(_value):
        globals()[f"{_name}_postgres"] = _value


@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(create_app(pg_url))) as test_client:
        yield test_client
