"""One private PostgreSQL server for every PostgreSQL test of the session."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from .pgserver import PostgresServer, start_server, stop_server

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # fsync off: the tests kill ipamd replicas, never the database server.
    server = start_server({"fsync": "off", "synchronous_commit": "off"})
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """Return the URL of a new, empty database for one test."""
    return postgres_server.create_database(f"lwtest{next(_database_numbers)}")
