"""Benchmark of ipamd allocation on SQLite and PostgreSQL, with pgbench as the reference.

Run: ``.venv/bin/python bench/bench_ipamd.py [--quick]`` (as root or as a user
that may run PostgreSQL's initdb). The script starts its own private
PostgreSQL server (unix socket only, in a temporary directory) and its own
``leasewire ipamd`` processes on 127.0.0.1, and stops them afterwards.

Workload: every allocation is one ``POST /v1/leases`` for a new owner, timed
from send to answer by the client. No releases are mixed in: the "empty /24"
case frees its leases with one SQL ``DELETE`` between rounds of at most 200
allocations (outside the timed part), so that the /24 never fills up; the /8
case starts with 100,000 leases inserted through SQL on the first 100,000
addresses, so the first search walks over all of them.

Targets (issue 3): PostgreSQL with 64 clients at least 0.5 x pgbench's
simple-update rate (``pgbench -N -c 64 -j 2 -T 10`` on the same server, same
run); at least 2,000 allocations/s on SQLite; p50 in the full /8 within 1.5 x
of the empty /24.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import aiohttp
from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "pg"))

from pgserver import PostgresServer, find_binary, start_server, stop_server

from leasewire.ipamd.addresses import address_key
from leasewire.ipamd.models import Lease

LEASEWIRE = str(Path(sys.executable).parent / "leasewire")
CLIENT_COUNTS = (1, 16, 64)
PREFILLED = 100_000
ROUND_IN_SLASH24 = 200
TARGET_SQLITE_RATE = 2000.0
TARGET_PG_SHARE = 0.5
TARGET_P50_RATIO = 1.5


@dataclass
class Result:
    database: str
    pool: str
    clients: int
    allocations: int
    seconds: float
    latencies: list[float]
    server_cpu: float
    """CPU seconds (user + system) that the ipamd process spent on the run."""

    @property
    def rate(self) -> float:
        return self.allocations / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)


def _stat_fields(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of process ``pid`` and its live children so far."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(entry.name)
        except OSError:
            continue
        if child[1] == str(pid):
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def ipamd(database: str, log: Path, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Run ``leasewire ipamd`` on a free loopback port; yield its base URL and process id."""
    port = free_port()
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [
                LEASEWIRE,
                "--log-level",
                os.environ.get("LW_BENCH_IPAMD_LOG", "warning"),
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
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"ipamd on {url} was not ready within 30 s")


async def put_pool(session: aiohttp.ClientSession, url: str, name: str, cidr: str) -> None:
    body = {"cidr": cidr, "cooldownSeconds": 0}
    async with session.put(f"{url}/v1/pools/{name}", json=body) as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"PUT pool {name}: {response.status} {await response.text()}")


async def prefill(database: str, pool: str, count: int) -> None:
    """Insert ``count`` bound leases on the first addresses of ``pool`` directly through SQL."""
    engine = create_async_engine(database)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as connection:
            pool_id = (
                await connection.execute(text("SELECT id FROM pool WHERE name = :n"), {"n": pool})
            ).scalar_one()
            rows = [
                {
                    "pool_id": pool_id,
                    "address": address_key(4, (10 << 24) + 1 + index),
                    "state": "bound",
                    "cluster": "prefill",
                    "container_id": f"prefill-{index}",
                    "ifname": "eth0",
                    "pod_namespace": "",
                    "pod_name": "",
                    "pod_uid": "",
                    "node": "",
                    "network": "",
                    "created_at": now,
                    "bound_at": now,
                }
                for index in range(count)
            ]
            for start in range(0, count, 10_000):
                await connection.execute(
                    insert(cast(Table, Lease.__table__)), rows[start : start + 10_000]
                )
    finally:
        await engine.dispose()


async def clear_pool(database: str, pool: str) -> None:
    engine = create_async_engine(database)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM lease WHERE pool_id = (SELECT id FROM pool WHERE name = :n)"),
                {"n": pool},
            )
    finally:
        await engine.dispose()


class Connections:
    """Keep-alive HTTP/1.1 connections to ipamd, reused from run to run.

    The load generator shares the machine's cores with ipamd, so it speaks
    HTTP/1.1 over plain asyncio streams instead of through aiohttp's client,
    which costs several times more CPU per request.
    """

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.host = host
        self.port = int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def take(self, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        while len(self.idle) < count:
            self.idle.append(await asyncio.open_connection(self.host, self.port))
        taken, self.idle = self.idle[:count], self.idle[count:]
        return taken

    def give_back(self, streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
        self.idle += streams

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle = []


class Load:
    """Clients that each send ``POST /v1/leases`` for new owners, one request at a time."""

    def __init__(self, connections: Connections, pool: str, tag: str) -> None:
        self.connections = connections
        self.pool = pool
        self.tag = tag
        self.sent = 0

    async def allocate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        self.sent += 1
        owner = {"cluster": "bench", "containerID": f"{self.tag}-{self.sent}", "ifname": "eth0"}
        body = json.dumps({"pool": self.pool, "owner": owner, "node": "node-1"}).encode()
        head = (
            f"POST /v1/leases HTTP/1.1\r\nHost: {self.connections.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        writer.write(head + body)
        header = await reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        if status not in (200, 201):
            raise RuntimeError(f"POST /v1/leases: {status} {answer.decode(errors='replace')}")
        return time.perf_counter() - started

    async def run(self, clients: int, allocations: int) -> tuple[float, list[float]]:
        latencies: list[float] = []
        remaining = allocations
        streams = await self.connections.take(clients)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await self.allocate(reader, writer))

        started = time.perf_counter()
        await asyncio.gather(*(client(reader, writer) for reader, writer in streams))
        seconds = time.perf_counter() - started
        self.connections.give_back(streams)
        return seconds, latencies


async def measure(
    database: str, label: str, log: Path, allocations: dict[int, int], workers: int = 1
) -> list[Result]:
    results: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=60)
    with ipamd(database, log, workers) as (url, pid):
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_ready(session, url)
            await put_pool(session, url, "small", "192.168.0.0/24")
            await put_pool(session, url, "large", "10.0.0.0/8")
        await prefill(database, "large", PREFILLED)
        connections = Connections(url)
        try:
            # Warm-up: connections, caches, and the first walk over the prefilled leases.
            connections.give_back(await connections.take(max(CLIENT_COUNTS)))
            await Load(connections, "large", "warm").run(4, 40)
            await Load(connections, "small", "warm").run(4, 40)
            await clear_pool(database, "small")
            for clients in CLIENT_COUNTS:
                results += await measure_clients(
                    database, label, pid, connections, clients, allocations[clients]
                )
                print(f"  {label}: {clients} client(s) done", flush=True)
        finally:
            await connections.close()
    return results


async def measure_clients(
    database: str, label: str, pid: int, connections: Connections, clients: int, count: int
) -> list[Result]:
    """Measure ``count`` allocations by ``clients`` clients in the empty /24, then in the /8."""
    load = Load(connections, "small", f"s{clients}")
    seconds = 0.0
    latencies: list[float] = []
    done = 0
    cpu = 0.0
    while done < count:
        batch = min(ROUND_IN_SLASH24, count - done)
        cpu -= cpu_seconds(pid)
        spent, more = await load.run(min(clients, batch), batch)
        cpu += cpu_seconds(pid)
        seconds += spent
        latencies += more
        done += batch
        await clear_pool(database, "small")
    small = Result(label, "empty /24", clients, count, seconds, latencies, cpu)

    load = Load(connections, "large", f"l{clients}")
    cpu = cpu_seconds(pid)
    seconds, latencies = await load.run(clients, count)
    cpu = cpu_seconds(pid) - cpu
    return [small, Result(label, "/8, 100k leases", clients, count, seconds, latencies, cpu)]


def pgbench(server: PostgresServer, seconds: int) -> float:
    """Run pgbench's simple-update test against the server; return its transactions per second."""
    server.psql('CREATE DATABASE "pgbench"')
    common = ["-h", str(server.socket_dir), "-U", "postgres"]
    binary = find_binary("pgbench")
    server.run(binary, "-i", "-s", "1", "-q", *common, "pgbench")
    result = server.run(binary, "-N", "-c", "64", "-j", "2", "-T", str(seconds), *common, "pgbench")
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no rate:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def print_table(results: list[Result]) -> None:
    print()
    print(
        "| database | pool | clients | allocations | allocations/s | p50 | p99 "
        "| ipamd CPU per allocation |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for item in results:
        print(
            f"| {item.database} | {item.pool} | {item.clients} | {item.allocations:,} "
            f"| {item.rate:,.0f} | {item.p50 * 1000:.1f} ms "
            f"| {item.percentile(0.99) * 1000:.1f} ms "
            f"| {item.server_cpu / item.allocations * 1e6:.0f} us |"
        )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_targets(results: list[Result], pgbench_tps: float | None) -> None:
    def find(database: str, pool: str, clients: int) -> Result | None:
        for item in results:
            if (item.database, item.pool, item.clients) == (database, pool, clients):
                return item
        return None

    print()
    best_sqlite = max((item.rate for item in results if item.database == "SQLite"), default=0.0)
    ratio = best_sqlite / TARGET_SQLITE_RATE
    print(
        f"SQLite: best {best_sqlite:,.0f} allocations/s = {ratio:.2f} x the target "
        f"{TARGET_SQLITE_RATE:,.0f}/s: {verdict(ratio >= 1)}"
    )
    pg = find("PostgreSQL", "/8, 100k leases", 64)
    if pg is not None and pgbench_tps:
        share = pg.rate / pgbench_tps
        print(
            f"PostgreSQL, 64 clients: {pg.rate:,.0f} allocations/s against pgbench "
            f"{pgbench_tps:,.0f} tps = {share:.2f} (target >= {TARGET_PG_SHARE}): "
            f"{verdict(share >= TARGET_PG_SHARE)}"
        )
    for database in ("SQLite", "PostgreSQL"):
        for clients in CLIENT_COUNTS:
            small = find(database, "empty /24", clients)
            large = find(database, "/8, 100k leases", clients)
            if small is None or large is None:
                continue
            ratio = large.p50 / small.p50
            print(
                f"{database}, {clients} client(s): p50 /8 {large.p50 * 1000:.1f} ms / "
                f"/24 {small.p50 * 1000:.1f} ms = {ratio:.2f} (target <= {TARGET_P50_RATIO}): "
                f"{verdict(ratio <= TARGET_P50_RATIO)}"
            )


async def run_all(quick: bool, skip_postgres: bool, workers: int) -> None:
    scale = 0.2 if quick else 1.0
    allocations = {
        clients: int(count * scale) for clients, count in {1: 1000, 16: 4000, 64: 6000}.items()
    }
    work = Path(tempfile.mkdtemp(prefix="lw-bench-"))
    results: list[Result] = []
    pgbench_tps: float | None = None
    try:
        print("SQLite ...", flush=True)
        sqlite_url = f"sqlite+aiosqlite:///{work / 'ipamd.db'}"
        results += await measure(sqlite_url, "SQLite", work / "ipamd-sqlite.log", allocations)
        if not skip_postgres:
            print("PostgreSQL ...", flush=True)
            server = start_server()
            try:
                database = server.create_database("ipamd")
                results += await measure(
                    database, "PostgreSQL", work / "ipamd-pg.log", allocations, workers
                )
                print("pgbench ...", flush=True)
                pgbench_tps = pgbench(server, 5 if quick else 10)
            finally:
                stop_server(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    if pgbench_tps is not None:
        print(f"\npgbench -N -c 64 -j 2 on the same server: {pgbench_tps:,.0f} tps")
    print_targets(results, pgbench_tps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the allocations")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ipamd worker processes on PostgreSQL (default %(default)s)",
    )
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"ipamd workers on PostgreSQL: {args.workers}"
    )
    asyncio.run(run_all(args.quick, args.skip_postgres, args.workers))


if __name__ == "__main__":
    main()
