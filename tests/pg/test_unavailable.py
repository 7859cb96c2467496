"""ipamd while its PostgreSQL server is down: 503 with Retry-After, nothing half-written.

The test stops its own private server (not the session's shared one) in the
middle of a run, checks the answers while it is down, starts it again and
checks that the database holds exactly the acknowledged leases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from leasewire.ipamd.app import create_app

from .pgserver import PostgresServer, find_binary, start_server, stop_server


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    server = start_server({"fsync": "off"})
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
async def client(
    own_server: PostgresServer,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    url = own_server.create_database("ipamd")
    async with TestClient(TestServer(create_app(url))) as test_client:
        yield test_client


def lease_body(container: str) -> dict[str, object]:
    return {"pool": "p", "owner": {"cluster": "c1", "containerID": container, "ifname": "eth0"}}


def start_again(server: PostgresServer) -> None:
    server.run(
        find_binary("pg_ctl"),
        "-D",
        str(server.data_dir),
        "-l",
        str(server.root / "server.log"),
        "-w",
        "start",
    )


async def test_database_down_answers_503_and_writes_nothing(
    client: TestClient[web.Request, web.Application], own_server: PostgresServer
) -> None:
    response = await client.put("/v1/pools/p", json={"cidr": "10.9.0.0/24", "cooldownSeconds": 0})
    assert response.status == 201, await response.text()
    response = await client.post("/v1/leases", json=lease_body("before"))
    assert response.status == 201
    before = (await response.json())["address"]

    own_server.stop()
    for container in ("during-1", "during-2"):
        response = await client.post("/v1/leases", json=lease_body(container))
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
        assert body["code"] == "database_unavailable"
        assert "nothing was written" in body["message"]
    response = await client.get("/readyz")
    assert response.status == 503

    start_again(own_server)
    response = await client.post("/v1/leases", json=lease_body("after"))
    assert response.status == 201, await response.text()
    after = (await response.json())["address"]
    assert after != before

    engine = create_async_engine(own_server.url("ipamd"))
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT container_id, state FROM lease ORDER BY container_id")
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [("after", "pending"), ("before", "pending")]
