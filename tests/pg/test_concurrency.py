"""Many clients against ipamd replica processes, one replica killed with SIGKILL mid-run.

Each run makes 10,000 allocations from 64 concurrent clients, with releases
mixed in. Afterwards the database must hold no address twice, and every lease
that a client saw acknowledged (and did not release) must be there.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ALLOCATIONS = 10_000
CLIENTS = 64
RELEASE_SHARE = 0.3
KILL_AFTER = 3_000
SKIP_DOWN_S = 1.0
"""Seconds a client leaves a replica alone after it refused a connection."""
LEASEWIRE = str(Path(sys.executable).parent / "leasewire")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Replica:
    database: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    LEASEWIRE,
                    "--log-level",
                    "warning",
                    "ipamd",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--database",
                    self.database,
                ],
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@contextmanager
def replicas(database: str, count: int, log_dir: Path) -> Iterator[list[Replica]]:
    started = [Replica(database, log_dir / f"ipamd-{index}.log") for index in range(count)]
    try:
        for replica in started:
            replica.start()
        yield started
    finally:
        for replica in started:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.terminate()
                try:
                    replica.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    replica.kill()


async def wait_ready(session: aiohttp.ClientSession, replica: Replica) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{replica.url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"ipamd replica on {replica.url} not ready in 30 s; see {replica.log}")


@dataclass
class Run:
    replicas: list[Replica]
    held: dict[str, str] = field(default_factory=dict)
    allocated: int = 0
    retries: int = 0
    down_until: dict[int, float] = field(default_factory=dict)
    killed: asyncio.Event = field(default_factory=asyncio.Event)

    def pick(self) -> Replica:
        """Choose a random replica among those that did not refuse a connection lately."""
        now = time.monotonic()
        live = [replica for replica in self.replicas if self.down_until.get(replica.port, 0) <= now]
        return random.choice(live or self.replicas)

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, **kwargs: object
    ) -> dict[str, object]:
        """Send a request to some live replica, retrying on others until one answers."""
        for attempt in range(200):
            replica = self.pick()
            try:
                async with session.request(method, replica.url + path, **kwargs) as response:  # type: ignore[arg-type]
                    answer: dict[str, object] = await response.json()
                    if response.status in (200, 201):
                        return answer
                    if response.status == 503:
                        self.retries += 1
                        continue
                    raise AssertionError(f"{method} {path}: {response.status} {answer}")
            except aiohttp.ClientConnectorError:
                # Refused: the replica is down. Others take its share for a while.
                self.retries += 1
                now = time.monotonic()
                self.down_until[replica.port] = now + SKIP_DOWN_S
                if all(self.down_until.get(other.port, 0) > now for other in self.replicas):
                    await asyncio.sleep(0.02)
            except (TimeoutError, aiohttp.ClientError):
                self.retries += 1
                await asyncio.sleep(0.01 * min(attempt, 10))
        raise AssertionError(f"{method} {path}: no replica answered")

    async def client(self, session: aiohttp.ClientSession, number: int, quota: int) -> None:
        mine: list[str] = []
        for index in range(quota):
            container = f"c{number}-{index}"
            body = {
                "pool": "p",
                "owner": {"cluster": "c1", "containerID": container, "ifname": "eth0"},
                "node": f"node-{number % 4}",
            }
            answer = await self.call(session, "POST", "/v1/leases", json=body)
            self.held[container] = str(answer["address"])
            mine.append(container)
            self.allocated += 1
            if self.allocated == KILL_AFTER:
                self.killed.set()
            if random.random() < RELEASE_SHARE:
                victim = mine.pop(random.randrange(len(mine)))
                params = {"cluster": "c1", "containerID": victim, "ifname": "eth0"}
                await self.call(session, "DELETE", "/v1/leases", params=params)
                del self.held[victim]


async def drive(run: Run, on_kill: object) -> float:
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CLIENTS * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for replica in run.replicas:
            await wait_ready(session, replica)
        async with session.put(
            f"{run.replicas[0].url}/v1/pools/p",
            json={"cidr": "10.128.0.0/16", "cooldownSeconds": 0},
        ) as response:
            assert response.status in (200, 201), await response.text()

        async def killer() -> None:
            await run.killed.wait()
            await asyncio.to_thread(on_kill)  # type: ignore[arg-type]

        started = time.monotonic()
        quota = ALLOCATIONS // CLIENTS
        extra = ALLOCATIONS - quota * CLIENTS
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(
            *(run.client(session, number, quota + (number < extra)) for number in range(CLIENTS))
        )
        elapsed = time.monotonic() - started
        await kill_task
        return elapsed


async def check_database(database: str, held: dict[str, str]) -> None:
    engine = create_async_engine(database)
    try:
        async with engine.connect() as connection:
            duplicates = (
                await connection.execute(
                    text(
                        "SELECT pool_id, address, count(*) FROM lease "
                        "WHERE state IN ('pending', 'bound') GROUP BY pool_id, address "
                        "HAVING count(*) > 1"
                    )
                )
            ).all()
            rows = (
                await connection.execute(
                    text(
                        "SELECT container_id, address FROM lease "
                        "WHERE state IN ('pending', 'bound')"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert duplicates == []
    stored = {container: bytes(address) for container, address in rows}
    missing = [container for container in held if container not in stored]
    assert missing == [], f"{len(missing)} acknowledged leases are missing"
    # Every acknowledged address is the stored one (the last 4 bytes are the IPv4 address).
    for container, address in held.items():
        host = address.split("/")[0]
        assert socket.inet_aton(host) == stored[container][-4:], container
    assert len(stored) == len(held)


async def test_three_replicas_on_postgres(pg_url: str, tmp_path: Path) -> None:
    with replicas(pg_url, 3, tmp_path) as started:
        run = Run(started)
        elapsed = await drive(run, started[0].kill)
        assert started[0].process is not None
        assert started[0].process.returncode == -signal.SIGKILL
    print(f"postgres: {ALLOCATIONS} allocations in {elapsed:.1f} s, {run.retries} retries")
    assert run.allocated == ALLOCATIONS
    await check_database(pg_url, run.held)


async def test_one_replica_on_sqlite(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    with replicas(database, 1, tmp_path) as started:
        run = Run(started)

        def kill_and_restart() -> None:
            started[0].kill()
            started[0].start()

        elapsed = await drive(run, kill_and_restart)
    print(f"sqlite: {ALLOCATIONS} allocations in {elapsed:.1f} s, {run.retries} retries")
    assert run.allocated == ALLOCATIONS
    assert (tmp_path / "ipamd.db").stat().st_size > 0
    await check_database(database, run.held)
