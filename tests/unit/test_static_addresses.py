"""Several requested exact addresses in one lease request (``addresses``), through ipamd's API.

tests/pg/test_static_addresses_postgres.py runs these tests again on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from leasewire.ipamd.app import create_app
from leasewire.ipamd.batch import WRITER

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    async with TestClient(TestServer(create_app(url))) as test_client:
        yield test_client


def body(container: str, **extra: object) -> dict[str, object]:
    return {
        "owner": {"cluster": "c1", "containerID": container, "ifname": "eth0"},
        "pod": {"namespace": "ns", "name": f"pod-{container}", "uid": f"uid-{container}"},
        "node": "node-a",
        "network": "net1",
        **extra,
    }


async def put_pool(client: Client, name: str, **spec: object) -> None:
    response = await client.put(f"/v1/pools/{name}", json=spec)
    assert response.status == 201, await response.text()


async def allocate(client: Client, container: str, status: int = 201, **extra: object) -> Any:
    response = await client.post("/v1/leases", json=body(container, **extra))
    answer = await response.json()
    assert response.status == status, answer
    return answer


async def held(client: Client, container: str) -> list[str]:
    response = await client.get("/v1/leases", params={"containerID": container})
    assert response.status == 200
    return [item["address"] for item in await response.json()]


async def dual_stack(client: Client) -> None:
    await put_pool(client, "v4", cidr="10.70.0.0/24", gateway="10.70.0.1")
    await put_pool(client, "v6", cidr="fd00:70::/64", gateway="fd00:70::1")


async def test_two_addresses_one_per_pool(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", pools=["v4", "v6"], addresses=["10.70.0.50", "fd00:70::5"])
    assert [item["pool"] for item in answer["leases"]] == ["v4", "v6"]
    assert [item["address"] for item in answer["leases"]] == ["10.70.0.50/24", "fd00:70::5/64"]
    assert answer["address"] == "10.70.0.50/24"

    # The same request again returns the same leases.
    again = await allocate(
        client, "a", status=200, pools=["v4", "v6"], addresses=["10.70.0.50", "fd00:70::5"]
    )
    assert [item["address"] for item in again["leases"]] == ["10.70.0.50/24", "fd00:70::5/64"]


async def test_addresses_in_any_order(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", pools=["v4", "v6"], addresses=["fd00:70::6", "10.70.0.60"])
    assert [item["address"] for item in answer["leases"]] == ["10.70.0.60/24", "fd00:70::6/64"]


@pytest.mark.parametrize("field", ["address", "addresses"])
async def test_one_address_two_pools(client: Client, field: str) -> None:
    await dual_stack(client)
    requested: object = "fd00:70::7" if field == "address" else ["fd00:70::7"]
    response = await client.post(
        "/v1/leases", json=body("a", pools=["v4", "v6"], **{field: requested})
    )
    assert response.status == 201
    addresses = [item["address"] for item in (await response.json())["leases"]]
    # The IPv4 pool has no requested address, so it leases its first free one.
    assert addresses == ["10.70.0.2/24", "fd00:70::7/64"]


async def test_address_and_addresses_rejected(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(
        client,
        "a",
        status=422,
        pools=["v4", "v6"],
        address="10.70.0.50",
        addresses=["fd00:70::5"],
    )
    assert answer["code"] == "invalid_request"
    assert "address" in answer["message"]
    assert "addresses" in answer["message"]
    assert answer["details"]["fields"] == ["address", "addresses"]
    assert await held(client, "a") == []


async def test_address_outside_pools_leases_nothing(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(
        client, "a", status=422, pools=["v4", "v6"], addresses=["10.70.0.50", "fd00:99::5"]
    )
    assert answer["code"] == "address_not_allocatable"
    assert "fd00:99::5" in answer["message"]
    assert "outside the pool CIDR fd00:70::/64" in answer["message"]
    assert answer["details"]["address"] == "fd00:99::5"
    assert await held(client, "a") == []


async def test_address_outside_ranges_names_reason(client: Client) -> None:
    await put_pool(
        client, "v4", cidr="10.71.0.0/24", ranges=[{"start": "10.71.0.10", "end": "10.71.0.20"}]
    )
    await put_pool(client, "v6", cidr="fd00:71::/64")
    answer = await allocate(
        client, "a", status=422, pools=["v4", "v6"], addresses=["10.71.0.30", "fd00:71::5"]
    )
    assert answer["code"] == "address_not_allocatable"
    assert "10.71.0.30" in answer["message"]
    assert "outside the pool ranges" in answer["message"]
    assert await held(client, "a") == []


async def test_two_addresses_of_one_pool(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(
        client, "a", status=422, pools=["v4", "v6"], addresses=["10.70.0.50", "10.70.0.51"]
    )
    assert answer["code"] == "invalid_request"
    assert "10.70.0.50" in answer["message"]
    assert "10.70.0.51" in answer["message"]
    assert "'v4'" in answer["message"]
    assert await held(client, "a") == []


async def test_address_requested_twice(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(
        client, "a", status=422, pools=["v4", "v6"], addresses=["10.70.0.50", "10.70.0.50"]
    )
    assert answer["code"] == "invalid_request"
    assert "requested twice" in answer["message"]


async def test_invalid_address_text(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(
        client, "a", status=422, pools=["v4", "v6"], addresses=["10.70.0.50/24"]
    )
    assert answer["code"] == "invalid_request"
    assert "addresses = '10.70.0.50/24'" in answer["message"]


async def test_taken_address_leases_nothing(client: Client) -> None:
    await dual_stack(client)
    await allocate(client, "first", pool="v6", address="fd00:70::5")
    answer = await allocate(
        client, "a", status=409, pools=["v4", "v6"], addresses=["10.70.0.50", "fd00:70::5"]
    )
    assert answer["code"] == "address_taken"
    assert "fd00:70::5" in answer["message"]
    assert "ns/pod-first" in answer["message"]
    # All or none: the IPv4 address stays free for the next request.
    assert await held(client, "a") == []
    other = await allocate(client, "b", pool="v4", address="10.70.0.50")
    assert other["address"] == "10.70.0.50/24"


async def test_selection_with_addresses(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", addresses=["10.70.0.50", "fd00:70::5"])
    assert [item["pool"] for item in answer["leases"]] == ["v4", "v6"]
    assert [item["address"] for item in answer["leases"]] == ["10.70.0.50/24", "fd00:70::5/64"]

    # A request for another address in a family where the owner has a lease is rejected.
    other = await allocate(client, "a", status=409, addresses=["10.70.0.50", "fd00:70::6"])
    assert other["code"] == "owner_holds_other_address"
    assert await held(client, "a") == ["10.70.0.50/24", "fd00:70::5/64"]


async def test_selection_adds_address_family(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", families=["ipv4"], addresses=["fd00:70::8"])
    addresses = [item["address"] for item in answer["leases"]]
    assert addresses == ["10.70.0.2/24", "fd00:70::8/64"]


async def test_selection_two_addresses_of_one_family(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", status=422, addresses=["10.70.0.50", "10.70.0.51"])
    assert answer["code"] == "invalid_request"
    assert "ipv4" in answer["message"]
    assert await held(client, "a") == []


async def test_selection_address_outside_pools(client: Client) -> None:
    await dual_stack(client)
    answer = await allocate(client, "a", status=409, addresses=["10.70.0.50", "fd00:99::5"])
    assert answer["code"] == "no_pool_available"
    assert "fd00:99::5" in answer["message"]
    assert answer["details"]["address"] == "fd00:99::5"
    assert await held(client, "a") == []


async def test_batch_mixes_simple_and_static(client: Client) -> None:
    await dual_stack(client)
    await allocate(client, "holder", pool="v6", address="fd00:70::99")
    # Sent together, most of these wait for the writer and share a batch: the
    # plain requests share one insert at the cursor, the others run in SAVEPOINTs.
    requests = [body(f"plain{index}", pool="v4") for index in range(4)]
    requests += [
        body(f"static{index}", pools=["v4", "v6"], addresses=[f"10.70.0.{100 + index}"])
        for index in range(3)
    ]
    requests.append(body("loser", pools=["v4", "v6"], addresses=["10.70.0.200", "fd00:70::99"]))
    # One named pool with an exact address must not take the shared insert at the cursor.
    requests += [
        body(f"one{index}", pool="v4", addresses=[f"10.70.0.{150 + index}"]) for index in range(2)
    ]
    batches = client.app[WRITER].batches
    responses = await asyncio.gather(*(client.post("/v1/leases", json=item) for item in requests))
    answers = [await response.json() for response in responses]

    assert client.app[WRITER].batches - batches < len(requests)
    assert [response.status for response in responses] == [201] * 7 + [409] + [201] * 2
    assert answers[7]["code"] == "address_taken"
    assert answers[8]["address"] == "10.70.0.150/24"
    assert answers[9]["address"] == "10.70.0.151/24"
    plain = {answer["address"] for answer in answers[:4]}
    assert len(plain) == 4
    for index in range(3):
        leases = answers[4 + index]["leases"]
        assert leases[0]["address"] == f"10.70.0.{100 + index}/24"
        assert leases[1]["pool"] == "v6"
    assert "10.70.0.200/24" not in plain
    assert await held(client, "loser") == []


async def test_openapi_documents_addresses(client: Client) -> None:
    document = await (await client.get("/v1/openapi.json")).json()
    properties = document["components"]["schemas"]["LeaseCreate"]["properties"]
    assert "addresses" in properties
    assert "address" in properties
    options = properties["addresses"]["anyOf"]
    assert {"type": "array", "items": {"type": "string"}, "minItems": 1} in options
