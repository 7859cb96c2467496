"""ipamd's lease lifecycle, pool updates, pool selection and operations endpoints.

Runs on SQLite here; tests/pg runs the same tests against PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from leasewire.api import LeaseView, PoolView
from leasewire.ipamd.app import create_app
from leasewire.ipamd.lifecycle import sweep
from leasewire.ipamd.models import Lease, utcnow
from leasewire.ipamd.state import SESSIONMAKER

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    async with TestClient(TestServer(create_app(url))) as test_client:
        yield test_client


def owner(container: str, ifname: str = "eth0") -> dict[str, str]:
    return {"cluster": "c1", "containerID": container, "ifname": ifname}


def body(container: str, **extra: object) -> dict[str, object]:
    return {
        "owner": owner(container),
        "pod": {"namespace": "ns", "name": f"pod-{container}", "uid": f"uid-{container}"},
        "node": "node-a",
        "network": "net1",
        **extra,
    }


async def put_pool(client: Client, name: str, status: int = 201, **spec: object) -> dict[str, Any]:
    response = await client.put(f"/v1/pools/{name}", json=spec)
    answer: dict[str, Any] = await response.json()
    assert response.status == status, answer
    return answer


async def allocate(client: Client, container: str, status: int = 201, **extra: object) -> Any:
    response = await client.post("/v1/leases", json=body(container, **extra))
    answer = await response.json()
    assert response.status == status, answer
    return answer


async def expire_all(client: Client) -> None:
    """Move every expiry and cooldown end into the past, as if the TTLs had run out."""
    past = utcnow() - timedelta(seconds=1)
    async with client.app[SESSIONMAKER].begin() as session:
        await session.execute(
            update(Lease).where(Lease.expires_at.is_not(None)).values(expires_at=past)
        )
        await session.execute(
            update(Lease).where(Lease.cooldown_until.is_not(None)).values(cooldown_until=past)
        )


# Lifecycle.


async def test_pending_then_confirm_binds(client: Client) -> None:
    await put_pool(client, "p", cidr="10.40.0.0/24")
    created = await allocate(client, "a", pool="p")
    assert created["state"] == "pending"
    assert created["expiresAt"]
    assert [item["address"] for item in created["leases"]] == [created["address"]]

    confirm = {"owner": owner("a"), "driver": "bridge", "options": {"mtu": 1400}}
    response = await client.post("/v1/leases/confirm", json=confirm)
    assert response.status == 200
    (bound,) = (await response.json())["leases"]
    assert bound["state"] == "bound"
    assert bound["expiresAt"] is None
    assert (bound["driver"], bound["options"]) == ("bridge", {"mtu": 1400})

    again = await client.post("/v1/leases/confirm", json=confirm)
    assert again.status == 200
    assert (await again.json())["leases"][0]["boundAt"] == bound["boundAt"]


async def test_confirm_without_lease_is_404(client: Client) -> None:
    response = await client.post(
        "/v1/leases/confirm", json={"owner": owner("none"), "driver": "bridge"}
    )
    assert response.status == 404
    assert (await response.json())["code"] == "lease_not_found"


async def test_expired_pending_frees_address(client: Client) -> None:
    await put_pool(client, "p", cidr="10.41.0.0/30", cooldownSeconds=0)
    await allocate(client, "a", pool="p")
    await allocate(client, "b", pool="p")
    exhausted = await allocate(client, "c", status=409, pool="p")
    assert exhausted["code"] == "pool_exhausted"

    await expire_all(client)
    # Allocation reclaims expired pending leases itself, before the sweep runs.
    await allocate(client, "c", pool="p")
    held = await (await client.get("/v1/leases", params={"pool": "p"})).json()
    assert [item["owner"]["containerID"] for item in held] == ["c"]

    await expire_all(client)
    expired, _cooled, _deleted = await sweep(client.app)
    assert expired == 1
    assert await (await client.get("/v1/leases", params={"pool": "p"})).json() == []
    confirm = {"owner": owner("c"), "driver": "bridge"}
    assert (await client.post("/v1/leases/confirm", json=confirm)).status == 404


async def test_cooldown_blocks_reuse_until_it_ends(client: Client) -> None:
    await put_pool(client, "p", cidr="10.42.0.0/30", cooldownSeconds=600)
    first = await allocate(client, "a", pool="p")
    await allocate(client, "b", pool="p")
    released = await client.delete(
        "/v1/leases", params={"cluster": "c1", "containerID": "a", "ifname": "eth0"}
    )
    (item,) = (await released.json())["released"]
    assert item["cooldownUntil"]

    pool = PoolView.model_validate(await (await client.get("/v1/pools/p")).json())
    assert (pool.allocated, pool.cooling, pool.free) == (1, 1, 0)
    assert (await allocate(client, "c", status=409, pool="p"))["code"] == "pool_exhausted"

    await expire_all(client)
    # An ended cooldown no longer counts, even before the sweep clears it.
    pool = PoolView.model_validate(await (await client.get("/v1/pools/p")).json())
    assert (pool.allocated, pool.cooling, pool.free) == (1, 0, 1)
    _expired, cooled, _deleted = await sweep(client.app)
    assert cooled == 1
    assert (await allocate(client, "c", pool="p"))["address"] == first["address"]


async def test_static_request_takes_cooling_address(client: Client) -> None:
    await put_pool(client, "p", cidr="10.43.0.0/24", cooldownSeconds=600)
    first = await allocate(client, "a", pool="p")
    await client.delete("/v1/leases", params={"cluster": "c1", "containerID": "a"})
    host = first["address"].split("/")[0]
    assert (await allocate(client, "b", pool="p", address=host))["address"] == first["address"]


async def test_release_filters(client: Client) -> None:
    await put_pool(client, "p", cidr="10.44.0.0/24")
    await allocate(client, "a", pool="p")
    await allocate(client, "b", pool="p", node="node-b")
    await allocate(client, "c", pool="p", network="other")

    async def release(**params: str) -> list[str]:
        response = await client.delete("/v1/leases", params=params)
        assert response.status == 200, await response.text()
        return sorted(item["owner"]["containerID"] for item in (await response.json())["released"])

    assert await release(cluster="c1", node="node-a", network="net1") == ["a"]
    past = (utcnow() - timedelta(hours=1)).isoformat()
    assert await release(cluster="c1", podUID="uid-b", createdBefore=past) == []
    assert await release(cluster="c1", podUID="uid-b") == ["b"]
    assert await release(cluster="c1", containerID="c", pool="p") == ["c"]

    missing = await client.delete("/v1/leases", params={"node": "node-a"})
    assert missing.status == 422
    assert (await missing.json())["code"] == "invalid_request"
    bad_time = await client.delete(
        "/v1/leases", params={"cluster": "c1", "node": "x", "createdBefore": "yesterday"}
    )
    assert bad_time.status == 422


async def test_gc_releases_only_invalid(client: Client) -> None:
    await put_pool(client, "p", cidr="10.45.0.0/24")
    for container in ("keep", "drop"):
        await allocate(client, container, pool="p")
    await allocate(client, "elsewhere", pool="p", network="net2")
    response = await client.post(
        "/v1/leases/gc",
        json={
            "cluster": "c1",
            "node": "node-a",
            "network": "net1",
            "valid": [{"containerID": "keep", "ifname": "eth0"}],
        },
    )
    released = (await response.json())["released"]
    assert [item["owner"]["containerID"] for item in released] == ["drop"]
    held = await (await client.get("/v1/leases", params={"cluster": "c1"})).json()
    assert sorted(item["owner"]["containerID"] for item in held) == ["elsewhere", "keep"]


async def test_list_filters_and_states(client: Client) -> None:
    await put_pool(client, "p", cidr="10.46.0.0/24")
    await allocate(client, "a", pool="p")
    await allocate(client, "b", pool="p")
    await client.delete("/v1/leases", params={"cluster": "c1", "containerID": "b"})

    async def owners(**params: str) -> list[str]:
        response = await client.get("/v1/leases", params=params)
        assert response.status == 200
        return [item["owner"]["containerID"] for item in await response.json()]

    assert await owners(podUID="uid-a") == ["a"]
    assert await owners(containerID="a", ifname="eth0", network="net1") == ["a"]
    assert sorted(await owners(state="all")) == ["a", "b"]
    assert await owners(state="pending") == ["a"]
    bad = await client.get("/v1/leases", params={"state": "gone"})
    assert bad.status == 422


# Pools.


async def test_put_creates_then_updates_generation(client: Client) -> None:
    spec: dict[str, Any] = {
        "cidr": "10.47.0.0/24",
        "gateway": "10.47.0.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.47.0.1"}],
        "dns": {"nameservers": ["10.47.0.53"], "search": ["svc.local"]},
        "vlan": 100,
    }
    created = await put_pool(client, "p", **spec)
    assert created["generation"] == 1
    same = await put_pool(client, "p", status=200, **spec)
    assert same["generation"] == 1
    changed = await put_pool(client, "p", status=200, **{**spec, "priority": 5})
    assert (changed["generation"], changed["priority"]) == (2, 5)

    lease = await allocate(client, "a", pool="p")
    assert lease["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.47.0.1"}]
    assert lease["dns"]["nameservers"] == ["10.47.0.53"]
    assert lease["vlan"] == 100

    immutable = await put_pool(client, "p", status=409, **{**spec, "cidr": "10.48.0.0/24"})
    assert immutable["code"] == "field_immutable"


async def test_shrink_below_held_address_refused(client: Client) -> None:
    await put_pool(client, "p", cidr="10.49.0.0/24")
    held = await allocate(client, "a", pool="p")
    host = held["address"].split("/")[0]
    refused = await put_pool(client, "p", status=409, cidr="10.49.0.0/24", exclude=[host])
    assert refused["code"] == "pool_shrink_conflict"
    assert refused["details"]["holders"][0]["name"] == "pod-a"
    assert "ns/pod-a" in refused["message"]

    # Growing or shrinking elsewhere keeps the lease where it is.
    await put_pool(client, "p", status=200, cidr="10.49.0.0/24", exclude=["10.49.0.200/29"])
    again = await allocate(client, "a", status=200, pool="p")
    assert again["address"] == held["address"]


async def test_pool_overlap_same_scope(client: Client) -> None:
    await put_pool(client, "a", cidr="10.50.0.0/24", cluster="c1")
    overlap = await put_pool(client, "b", status=422, cidr="10.50.0.128/25")
    assert overlap["code"] == "pool_overlap"
    assert overlap["details"]["other"] == "a"
    # Another cluster's scope, or disjoint ranges in the same CIDR, may share it.
    await put_pool(client, "c", cidr="10.50.0.0/24", cluster="c2")
    await put_pool(
        client,
        "d",
        cidr="10.51.0.0/24",
        ranges=[{"start": "10.51.0.10", "end": "10.51.0.19"}],
    )
    await put_pool(
        client,
        "e",
        cidr="10.51.0.0/24",
        ranges=[{"start": "10.51.0.20", "end": "10.51.0.29"}],
    )


async def test_pool_delete_names_holders(client: Client) -> None:
    await put_pool(client, "p", cidr="10.52.0.0/24")
    await allocate(client, "a", pool="p")
    refused = await client.delete("/v1/pools/p")
    answer = await refused.json()
    assert refused.status == 409
    assert answer["code"] == "pool_in_use"
    assert answer["details"]["holders"][0]["uid"] == "uid-a"


@pytest.mark.parametrize(
    ("cidr", "size"),
    [("10.53.0.0/31", 2), ("10.53.0.1/32", 1), ("fd00:53::/127", 2), ("fd00:53::5/128", 1)],
)
async def test_small_networks(client: Client, cidr: str, size: int) -> None:
    pool = await put_pool(client, "p", cidr=cidr)
    assert pool["size"] == size
    for index in range(size):
        await allocate(client, f"c{index}", pool="p")
    assert (await allocate(client, "over", status=409, pool="p"))["code"] == "pool_exhausted"


# Selection and dual-stack.


async def test_selection_by_labels_and_priority(client: Client) -> None:
    await put_pool(client, "low", cidr="10.54.0.0/30", priority=1)
    await put_pool(client, "high", cidr="10.55.0.0/31", priority=9)
    await put_pool(
        client,
        "team",
        cidr="10.56.0.0/24",
        priority=50,
        selectors={"namespaceLabels": {"team": "x"}},
    )
    assert (await allocate(client, "a"))["pool"] == "high"
    assert (await allocate(client, "b"))["pool"] == "high"
    # high is exhausted: the next one by priority.
    assert (await allocate(client, "c"))["pool"] == "low"
    assert (await allocate(client, "d", namespaceLabels={"team": "x"}))["pool"] == "team"
    # The same owner again gets the same lease.
    assert (await allocate(client, "a", status=200))["pool"] == "high"


async def test_selection_failure_lists_pools(client: Client) -> None:
    await put_pool(client, "v6", cidr="fd00:57::/64")
    await put_pool(client, "nodes", cidr="10.57.0.0/24", selectors={"nodeLabels": {"gpu": "y"}})
    await put_pool(client, "other", cidr="10.58.0.0/24", cluster="c9")
    answer = await allocate(client, "a", status=409)
    assert answer["code"] == "no_pool_available"
    reasons = {item["pool"]: item["reason"] for item in answer["details"]["considered"]}
    assert set(reasons) == {"v6", "nodes", "other"}
    assert "gpu=y" in reasons["nodes"]
    assert "c9" in reasons["other"]


async def test_dual_stack_all_or_none(client: Client) -> None:
    await put_pool(client, "v4", cidr="10.59.0.0/24")
    await put_pool(client, "v6", cidr="fd00:59::/126")
    both = await allocate(client, "a", pools=["v4", "v6"])
    assert [item["pool"] for item in both["leases"]] == ["v4", "v6"]
    await allocate(client, "b", pools=["v4", "v6"])
    await allocate(client, "c", pools=["v4", "v6"])

    # v6 (a /126: three usable) is full, so the IPv4 lease is not kept either.
    full = await allocate(client, "d", status=409, pools=["v4", "v6"])
    assert full["code"] == "pool_exhausted"
    held = await (await client.get("/v1/leases", params={"containerID": "d"})).json()
    assert held == []

    families = await allocate(client, "e", families=["ipv4", "ipv6"], status=409)
    assert families["code"] == "no_pool_available"


async def test_static_refusals(client: Client) -> None:
    await put_pool(client, "p", cidr="10.60.0.0/24", gateway="10.60.0.1", exclude=["10.60.0.9"])
    await allocate(client, "a", pool="p", address="10.60.0.5")
    taken = await allocate(client, "b", status=409, pool="p", address="10.60.0.5")
    assert taken["code"] == "address_taken"
    assert taken["details"]["pod"]["name"] == "pod-a"
    for address in ("10.60.0.1", "10.60.0.9", "10.61.0.1"):
        refused = await allocate(client, "b", status=422, pool="p", address=address)
        assert refused["code"] == "address_not_allocatable"


# Operations.


async def test_openapi_matches_routes(client: Client) -> None:
    document = await (await client.get("/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    routed = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routed - documented == set(), "routes without documentation"
    assert documented - routed == set(), "documented paths without a route"
    schemas = document["components"]["schemas"]
    assert "LeaseCreate" in schemas
    assert "PoolView" in schemas


async def test_readyz_and_metrics(client: Client) -> None:
    ready = await client.get("/readyz")
    assert ready.status == 200
    await put_pool(client, "p", cidr="10.62.0.0/29")
    await allocate(client, "a", pool="p")
    await client.get("/v1/pools/missing")

    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    assert 'leasewire_ipamd_pool_size{pool="p"} 6' in text
    assert 'leasewire_ipamd_pool_allocated{pool="p"} 1' in text
    assert 'leasewire_ipamd_pool_free{pool="p"} 5' in text
    assert 'leasewire_ipamd_errors_total{code="pool_not_found"} 1' in text
    assert "leasewire_ipamd_allocation_seconds_count 1" in text


async def test_lease_view_round_trips(client: Client) -> None:
    await put_pool(client, "p", cidr="10.63.0.0/24")
    answer = await allocate(client, "a", pool="p", mac="02:00:00:00:00:01")
    view = LeaseView.model_validate(answer)
    assert view.mac == "02:00:00:00:00:01"
    assert view.network == "net1"


async def test_selection_by_node_labels(client: Client) -> None:
    await put_pool(client, "gpu", cidr="10.64.0.0/24", selectors={"nodeLabels": {"gpu": "y"}})
    labels = await client.put("/v1/nodes/node-a", json={"cluster": "c1", "labels": {"gpu": "y"}})
    assert labels.status in (200, 201), await labels.text()
    assert (await allocate(client, "a"))["pool"] == "gpu"
    refused = await allocate(client, "b", status=409, node="node-b")
    assert "node-b" in refused["details"]["considered"][0]["reason"]
