"""Property tests of allocation through the HTTP API, on SQLite, with random pools and operations.

Hypothesis draws a small pool (IPv4 or IPv6, optional range, excludes and
gateway) and a sequence of operations: allocate, allocate one exact address,
release, restart ipamd on the same database file. A model of the held
addresses predicts every answer. Checked throughout: a lease is never outside
the usable addresses (ranges minus excludes, gateway and reserved addresses),
never given twice, the pool is exhausted exactly at its capacity, and the
state after a restart is the state before it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from leasewire.ipamd.allocator import PoolLayout, build_layout
from leasewire.ipamd.app import create_app
from leasewire.ipamd.errors import InvalidPool

OWNERS = 12
BASES = {4: ipaddress.ip_address("10.77.0.0"), 6: ipaddress.ip_address("fd00:77::")}


@dataclass(frozen=True)
class PoolDraw:
    version: int
    prefix: int
    gateway: int | None
    range_: tuple[int, int] | None
    excludes: tuple[tuple[int, int], ...]

    def address(self, offset: int) -> str:
        return str(BASES[self.version] + offset)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "cidr": f"{BASES[self.version]}/{self.prefix}",
            "cooldownSeconds": 0,
            "exclude": [
                self.address(first)
                if first == last
                else f"{self.address(first)}-{self.address(last)}"
                for first, last in self.excludes
            ],
        }
        if self.gateway is not None:
            body["gateway"] = self.address(self.gateway)
        if self.range_ is not None:
            body["ranges"] = [
                {"start": self.address(self.range_[0]), "end": self.address(self.range_[1])}
            ]
        return body

    def layout(self) -> PoolLayout:
        body = self.body()
        return build_layout(
            cidr=body["cidr"],
            gateway=body.get("gateway"),
            ranges=[(item["start"], item["end"]) for item in body.get("ranges", [])],
            exclude=body["exclude"],
        )


@st.composite
def pools(draw: st.DrawFn) -> PoolDraw:
    version = draw(st.sampled_from([4, 6]))
    prefix = draw(st.integers(26, 32) if version == 4 else st.integers(122, 128))
    size = 1 << ((32 if version == 4 else 128) - prefix)
    offsets = st.integers(0, size - 1)
    gateway = draw(st.none() | offsets)
    range_ = draw(st.none() | st.tuples(offsets, offsets).map(lambda pair: tuple(sorted(pair))))
    excludes = draw(
        st.lists(st.tuples(offsets, offsets).map(lambda pair: tuple(sorted(pair))), max_size=3)
    )
    return PoolDraw(version, prefix, gateway, range_, tuple(excludes))  # type: ignore[arg-type]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.integers(0, OWNERS - 1), st.just(0)),
        st.tuples(st.just("static"), st.integers(0, OWNERS - 1), st.integers(0, 70)),
        st.tuples(st.just("release"), st.integers(0, OWNERS - 1), st.just(0)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
    ),
    max_size=30,
)


def lease_body(owner: int, address: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pool": "p",
        "owner": {"cluster": "c1", "containerID": f"owner-{owner}", "ifname": "eth0"},
    }
    if address is not None:
        body["address"] = address
    return body


@dataclass
class Model:
    draw: PoolDraw
    layout: PoolLayout
    held: dict[int, int] = field(default_factory=dict)
    """Owner number -> address value."""

    def check_new(self, owner: int, value: int) -> None:
        assert self.layout.is_allocatable(value), f"{self.draw.address(0)}+: {value} not usable"
        assert value not in self.held.values(), f"{value} leased twice"
        self.held[owner] = value


def value_of(answer: dict[str, Any]) -> int:
    return int(ipaddress.ip_address(str(answer["address"]).split("/")[0]))


async def step(
    client: TestClient[Any, Any], model: Model, kind: str, owner: int, offset: int
) -> None:
    if kind == "allocate":
        response = await client.post("/v1/leases", json=lease_body(owner))
        answer = await response.json()
        if owner in model.held:
            assert response.status == 200, answer
            assert value_of(answer) == model.held[owner]
        elif len(model.held) < model.layout.size:
            assert response.status == 201, answer
            model.check_new(owner, value_of(answer))
        else:
            assert (response.status, answer["code"]) == (409, "pool_exhausted"), answer
    elif kind == "static":
        base = int(BASES[model.draw.version])
        network = model.layout.network
        value = base + offset % network.num_addresses
        response = await client.post(
            "/v1/leases", json=lease_body(owner, model.draw.address(value - base))
        )
        answer = await response.json()
        holders = {address: who for who, address in model.held.items()}
        if owner in model.held:
            expected = 200 if model.held[owner] == value else 409
            assert response.status == expected, answer
        elif not model.layout.is_allocatable(value):
            assert response.status == 422, answer
        elif value in holders:
            assert (response.status, answer["code"]) == (409, "address_taken"), answer
        else:
            assert response.status == 201, answer
            model.check_new(owner, value_of(answer))
    elif kind == "release":
        response = await client.delete(
            "/v1/leases",
            params={"cluster": "c1", "containerID": f"owner-{owner}", "ifname": "eth0"},
        )
        answer = await response.json()
        assert response.status == 200, answer
        assert len(answer["released"]) == (1 if owner in model.held else 0)
        model.held.pop(owner, None)


async def listed(client: TestClient[Any, Any]) -> dict[int, int]:
    response = await client.get("/v1/leases", params={"pool": "p"})
    assert response.status == 200
    return {
        int(item["owner"]["containerID"].removeprefix("owner-")): value_of(item)
        for item in await response.json()
    }


async def scenario(draw: PoolDraw, layout: PoolLayout, steps: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory(prefix="lw-prop-") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'ipamd.db'}"
        model = Model(draw, layout)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(url)))
        await client.start_server()
        try:
            response = await client.put("/v1/pools/p", json=draw.body())
            assert response.status == 201, await response.text()
            assert (await response.json())["size"] == layout.size
            for kind, owner, offset in steps:
                if kind == "restart":
                    before = await listed(client)
                    await client.close()
                    client = TestClient(TestServer(create_app(url)))
                    await client.start_server()
                    assert await listed(client) == before
                    continue
                await step(client, model, kind, owner, offset)
            assert await listed(client) == model.held
            # Fill the pool: exhausted exactly at capacity.
            for owner in range(OWNERS, OWNERS + layout.size - len(model.held)):
                await step(client, model, "allocate", owner, 0)
            assert len(model.held) == layout.size
            await step(client, model, "allocate", OWNERS + layout.size + 1, 0)
        finally:
            await client.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(draw=pools(), steps=operations)
def test_allocation_properties(draw: PoolDraw, steps: list[tuple[str, int, int]]) -> None:
    layout: PoolLayout | None
    try:
        layout = draw.layout()
    except InvalidPool:
        layout = None
    assume(layout is not None and layout.size <= 64)
    assert layout is not None
    asyncio.run(scenario(draw, layout, steps))
