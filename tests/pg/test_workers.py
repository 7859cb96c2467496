"""``leasewire ipamd --workers N``: N processes on one port, one PostgreSQL database."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp

from .test_concurrency import LEASEWIRE, free_port


def start(database: str, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [
                LEASEWIRE,
                "--log-level",
                "info",
                "ipamd",
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                database,
                "--workers",
                str(workers),
            ],
            stdout=log_file,
            stderr=log_file,
        )


def worker_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children}


async def test_two_workers_share_port_and_database(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ipamd.log"
    process = start(pg_url, port, 2, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            # Each worker logs its schema check, with its process id, just before it binds.
            while log.read_text().count("leasewire.ipamd.db[") < 2:
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            while True:
                try:
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            body = {"cidr": "10.40.0.0/24", "cooldownSeconds": 0}
            async with session.put(f"{url}/v1/pools/p", json=body) as response:
                assert response.status == 201, await response.text()

            async def allocate(index: int) -> str:
                owner = {"cluster": "c", "containerID": f"k{index}", "ifname": "eth0"}
                # A connection per request, so that the kernel spreads them over both workers.
                async with (
                    aiohttp.ClientSession() as own,
                    own.post(
                        f"{url}/v1/leases", json={"pool": "p", "owner": owner, "node": "n"}
                    ) as response,
                ):
                    assert response.status == 201, await response.text()
                    address: str = (await response.json())["address"]
                    return address

            addresses = await asyncio.gather(*(allocate(index) for index in range(100)))
        assert len(set(addresses)) == 100
        assert len(worker_pids(process.pid)) >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
    assert status == 0, log.read_text()
    assert "with 2 worker processes" in log.read_text()


def test_workers_refused_on_sqlite(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    log = tmp_path / "ipamd.log"
    process = start(database, free_port(), 2, log)
    assert process.wait(timeout=30) == 2
    assert "SQLite has one writer" in log.read_text()


def test_workers_must_be_positive(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    log = tmp_path / "ipamd.log"
    assert start(database, free_port(), 0, log).wait(timeout=30) == 2
    assert "invalid --workers 0" in log.read_text()
