"""``leasewire pool`` and ``leasewire lease`` against a real ipamd on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from leasewire.cli import main
from leasewire.ipamd.app import create_app


@pytest.fixture
async def ipamd_url(tmp_path: Path) -> AsyncIterator[str]:
    server = TestServer(create_app(f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_pool_and_lease_commands(ipamd_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = await run(
        capsys,
        "pool",
        "create",
        "p",
        "10.70.0.0/29",
        "--gateway",
        "10.70.0.1",
        "--route",
        "0.0.0.0/0,10.70.0.1",
        "--ipamd",
        ipamd_url,
    )
    assert status == 0
    assert "5 usable addresses" in out

    # create does not overwrite: the same spec again is fine, another one is an error.
    status, out, _ = await run(
        capsys,
        "pool",
        "create",
        "p",
        "10.70.0.0/29",
        "--gateway",
        "10.70.0.1",
        "--route",
        "0.0.0.0/0,10.70.0.1",
        "--ipamd",
        ipamd_url,
    )
    assert status == 0
    status, out, err = await run(
        capsys, "pool", "create", "p", "10.70.0.0/29", "--ipamd", ipamd_url
    )
    assert status == 1
    assert "pool_exists" in err

    status, out, _ = await run(capsys, "pool", "list", "--ipamd", ipamd_url)
    assert out.splitlines()[0].split() == [
        "NAME",
        "CIDR",
        "GATEWAY",
        "SCOPE",
        "PRIO",
        "SIZE",
        "ALLOCATED",
        "COOLING",
        "FREE",
    ]
    assert out.splitlines()[1].split() == [
        "p",
        "10.70.0.0/29",
        "10.70.0.1",
        "global",
        "0",
        "5",
        "0",
        "0",
        "5",
    ]

    status, out, _ = await run(capsys, "pool", "show", "p", "--ipamd", ipamd_url)
    assert "0.0.0.0/0 via 10.70.0.1" in out

    status, out, err = await run(capsys, "lease", "release", "--node", "n", "--ipamd", ipamd_url)
    assert status == 1
    assert "invalid_request" in err

    status, out, _ = await run(
        capsys,
        "pool",
        "update",
        "p",
        "10.70.0.0/29",
        "--gateway",
        "10.70.0.6",
        "--ipamd",
        ipamd_url,
    )
    assert status == 0
    assert "pool p updated" in out
    assert "10.70.0.6" in out

    status, out, err = await run(capsys, "pool", "delete", "missing", "--ipamd", ipamd_url)
    assert status == 1
    assert "pool_not_found" in err

    status, out, _ = await run(capsys, "lease", "list", "--ipamd", ipamd_url)
    assert status == 0
    assert out.split() == ["POOL", "ADDRESS", "STATE", "POD", "NODE", "CONTAINER", "IFNAME"]


async def test_unreachable_ipamd(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await run(capsys, "pool", "list", "--ipamd", "http://127.0.0.1:9")
    assert status == 2
    assert "not reachable" in err


async def test_ipamd_url_without_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await run(capsys, "pool", "list", "--ipamd", "127.0.0.1:8470")

    assert status == 2
    assert "invalid --ipamd '127.0.0.1:8470'" in err
    assert "http://127.0.0.1:8470" in err
