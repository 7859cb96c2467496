"""HTTP handlers of ipamd's pool API, version 1."""

from __future__ import annotations

import re

from aiohttp import web

from leasewire.api import POOL_NAME_PATTERN, PoolCreate, PoolUpsert, PoolView
from leasewire.ipamd.errors import InvalidRequest
from leasewire.ipamd.httpio import json_answer, read_body
from leasewire.ipamd.openapi import register_operation
from leasewire.ipamd.pools import (
    PoolCounts,
    count_leases,
    create_pool,
    delete_pool,
    pool_view,
    read_pools,
    require_pool,
    upsert_pool,
)
from leasewire.ipamd.state import transaction

pool_routes = web.RouteTableDef()


@pool_routes.post("/v1/pools")
async def post_pool(request: web.Request) -> web.Response:
    spec = await read_body(request, PoolCreate)
    async with transaction(request.app) as session:
        pool, created = await create_pool(session, spec.name, spec)
        view = pool_view(pool, (await count_leases(session, [pool.id]))[pool.id])
    return json_answer(view, status=201 if created else 200)


@pool_routes.put("/v1/pools/{name}")
async def put_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    spec = await read_body(request, PoolUpsert)
    if spec.name is not None and spec.name != name:
        raise InvalidRequest(
            f"invalid field name = {spec.name!r}: the body names another pool than the path "
            f"({name!r}); leave name out or repeat the path's",
            {"field": "name", "value": spec.name},
        )
    _check_name(name)
    async with transaction(request.app) as session:
        pool, created = await upsert_pool(session, name, spec)
        view = pool_view(pool, (await count_leases(session, [pool.id]))[pool.id])
    return json_answer(view, status=201 if created else 200)


def _check_name(name: str) -> None:
    """Apply the name rules of POST /v1/pools to the name in the path."""
    if len(name) > 63 or re.fullmatch(POOL_NAME_PATTERN, name) is None:
        raise InvalidRequest(
            f"invalid pool name {name!r}: use 1 to 63 lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit",
            {"field": "name", "value": name},
        )


@pool_routes.get("/v1/pools")
async def get_pools(request: web.Request) -> web.Response:
    async with transaction(request.app) as session:
        pools = await read_pools(session)
        counts = await count_leases(session, [pool.id for pool in pools])
    return json_answer([pool_view(pool, counts[pool.id]) for pool in pools])


@pool_routes.get("/v1/pools/{name}")
async def get_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with transaction(request.app) as session:
        pool = await require_pool(session, name)
        counts = (await count_leases(session, [pool.id]))[pool.id]
    return json_answer(pool_view(pool, counts))


@pool_routes.delete("/v1/pools/{name}")
async def remove_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with transaction(request.app) as session:
        pool = await delete_pool(session, name)
        view = pool_view(pool, PoolCounts())
    return json_answer(view)


register_operation(
    "POST",
    "/v1/pools",
    "Create a pool; the same spec again is a no-op, another spec under the name a 409.",
    request=PoolCreate,
    response=PoolView,
    statuses=(200, 201),
)
register_operation(
    "PUT",
    "/v1/pools/{name}",
    "Create or update a pool. The CIDR is immutable; an update never drops a held lease.",
    request=PoolUpsert,
    response=PoolView,
    statuses=(200, 201),
)
register_operation(
    "GET",
    "/v1/pools",
    "List pools with their usage counts.",
    response=PoolView,
    response_is_list=True,
)
register_operation(
    "GET", "/v1/pools/{name}", "Show one pool with its usage counts.", response=PoolView
)
register_operation(
    "DELETE",
    "/v1/pools/{name}",
    "Delete a pool that holds no pending or bound lease, with its released leases.",
    response=PoolView,
)
