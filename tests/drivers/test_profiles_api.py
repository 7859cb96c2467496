"""ipamd's attach profile and node API, and the attach profile in lease responses, on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from leasewire.ipamd.app import create_app

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(f"sqlite+aiosqlite:///{tmp_path}/ipamd.db")
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def call(client: Client, method: str, path: str, body: object = None) -> tuple[int, Any]:
    response = await client.request(method, path, json=body)
    return response.status, await response.json()


async def lease(client: Client, node: str, container: str, cluster: str = "default") -> Any:
    status, payload = await call(
        client,
        "POST",
        "/v1/leases",
        {
            "pool": "pods",
            "owner": {"cluster": cluster, "containerID": container, "ifname": "eth0"},
            "node": node,
        },
    )
    assert status == 201, payload
    return payload


@pytest.fixture
async def pool(client: Client) -> None:
    status, payload = await call(
        client, "POST", "/v1/pools", {"name": "pods", "cidr": "10.216.0.0/24"}
    )
    assert status == 201, payload


async def test_profile_crud(client: Client) -> None:
    spec = {"nodeSelector": {"pool": "metal"}, "driver": "sriov", "options": {"pf": "ens1"}}
    status, created = await call(client, "PUT", "/v1/attach-profiles/metal", spec)
    assert status == 201, created
    assert created == {**spec, "name": "metal", "priority": 0}

    status, updated = await call(
        client, "PUT", "/v1/attach-profiles/metal", {**spec, "priority": 5}
    )
    assert status == 200
    assert updated["priority"] == 5
    status, listed = await call(client, "GET", "/v1/attach-profiles")
    assert [profile["name"] for profile in listed] == ["metal"]
    status, shown = await call(client, "GET", "/v1/attach-profiles/metal")
    assert shown["options"] == {"pf": "ens1"}

    status, deleted = await call(client, "DELETE", "/v1/attach-profiles/metal")
    assert status == 200
    assert deleted["name"] == "metal"
    status, error = await call(client, "DELETE", "/v1/attach-profiles/metal")
    assert status == 404
    assert error["code"] == "profile_not_found"
    status, error = await call(client, "GET", "/v1/attach-profiles/metal")
    assert status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"nodeSelector": {}}, "driver"),
        ({"driver": ""}, "driver"),
        ({"driver": "macvlan", "priority": "high"}, "priority"),
        ({"driver": "macvlan", "nodeSelector": {"a": 1}}, "nodeSelector.a"),
        ({"driver": "macvlan", "colour": "blue"}, "colour"),
    ],
)
async def test_profile_invalid_body(client: Client, body: object, field: str) -> None:
    status, error = await call(client, "PUT", "/v1/attach-profiles/p", body)
    assert status == 422
    assert error["code"] == "invalid_request"
    assert field in error["message"]


async def test_profile_invalid_name(client: Client) -> None:
    status, error = await call(client, "PUT", "/v1/attach-profiles/Bad_Name", {"driver": "x"})
    assert status == 422
    assert "Bad_Name" in error["message"]


async def test_node_crud(client: Client) -> None:
    status, node = await call(client, "PUT", "/v1/nodes/n1", {"labels": {"pool": "l2"}})
    assert status == 201
    assert node == {"name": "n1", "cluster": "default", "labels": {"pool": "l2"}}
    status, node = await call(client, "PUT", "/v1/nodes/n1", {"cluster": "east", "labels": {}})
    assert status == 201
    status, node = await call(client, "PUT", "/v1/nodes/n1", {"labels": {"pool": "cloud"}})
    assert status == 200
    status, nodes = await call(client, "GET", "/v1/nodes?cluster=default")
    assert nodes == [{"name": "n1", "cluster": "default", "labels": {"pool": "cloud"}}]
    status, nodes = await call(client, "GET", "/v1/nodes")
    assert len(nodes) == 2

    status, _ = await call(client, "DELETE", "/v1/nodes/n1?cluster=east")
    assert status == 200
    status, error = await call(client, "DELETE", "/v1/nodes/n1?cluster=east")
    assert status == 404
    assert error["code"] == "node_not_found"


@pytest.mark.usefixtures("pool")
async def test_lease_carries_matching_profile(client: Client) -> None:
    # Without profiles a lease has no attach profile.
    assert (await lease(client, "n0", "c0"))["attach"] is None

    await call(client, "PUT", "/v1/nodes/n1", {"labels": {"pool": "l2", "zone": "a"}})
    await call(client, "PUT", "/v1/nodes/n2", {"labels": {"pool": "cloud"}})
    await call(client, "PUT", "/v1/nodes/n3", {"cluster": "east", "labels": {"pool": "l2"}})
    await call(
        client,
        "PUT",
        "/v1/attach-profiles/open-l2",
        {"nodeSelector": {"pool": "l2"}, "driver": "macvlan", "options": {"master": "eth1"}},
    )
    await call(
        client,
        "PUT",
        "/v1/attach-profiles/cloud",
        {"nodeSelector": {"pool": "cloud"}, "driver": "ipvlan", "options": {"mode": "l3"}},
    )
    await call(client, "PUT", "/v1/attach-profiles/default", {"driver": "bridge", "priority": -1})

    assert (await lease(client, "n1", "c1"))["attach"] == {
        "profile": "open-l2",
        "driver": "macvlan",
        "options": {"master": "eth1"},
    }
    assert (await lease(client, "n2", "c2"))["attach"]["driver"] == "ipvlan"
    # An unknown node has no labels: only the empty selector matches.
    assert (await lease(client, "unknown", "c3"))["attach"]["profile"] == "default"
    # Node labels are per cluster.
    assert (await lease(client, "n3", "c4", cluster="east"))["attach"]["profile"] == "open-l2"
    assert (await lease(client, "n3", "c5"))["attach"]["profile"] == "default"

    # Higher priority wins; equal priority goes by name.
    await call(
        client,
        "PUT",
        "/v1/attach-profiles/zone-a",
        {"nodeSelector": {"zone": "a"}, "driver": "sriov", "priority": 10},
    )
    assert (await lease(client, "n1", "c6"))["attach"]["profile"] == "zone-a"
    await call(
        client,
        "PUT",
        "/v1/attach-profiles/a-first",
        {"nodeSelector": {"zone": "a"}, "driver": "bridge", "priority": 10},
    )
    created = await lease(client, "n1", "c7")
    assert created["attach"]["profile"] == "a-first"
    assert created["leases"][0]["attach"]["profile"] == "a-first"


async def test_openapi_lists_attach_routes(client: Client) -> None:
    document = await (await client.get("/v1/openapi.json")).json()
    assert "put" in document["paths"]["/v1/attach-profiles/{name}"]
    assert "delete" in document["paths"]["/v1/nodes/{name}"]
