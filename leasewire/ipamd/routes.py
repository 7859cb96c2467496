"""HTTP handlers of ipamd's API, version 1.

Each handler validates its input with the wire models of ``leasewire.api``,
runs one transaction, and returns a wire model as JSON. Errors are raised as
domain errors and turned into JSON by the error middleware.
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from leasewire.api import LeaseCreate, LeaseState, Owner, PoolCreate
from leasewire.ipamd.errors import InvalidRequest, PoolNotFound
from leasewire.ipamd.leases import allocate_lease, lease_view, read_leases, release_leases
from leasewire.ipamd.pools import (
    count_held_leases,
    create_pool,
    delete_pool,
    layout_of,
    pool_view,
    read_pool,
    read_pools,
    require_pool,
)
from leasewire.ipamd.state import POOL_LOCKS, SESSIONMAKER

routes = web.RouteTableDef()

ModelT = TypeVar("ModelT", bound=BaseModel)


def _invalid_request(error: ValidationError) -> InvalidRequest:
    """Describe every problem of a request body, each naming its field and value."""
    problems: list[dict[str, object]] = []
    parts: list[str] = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        problem: dict[str, object] = {"field": field, "message": item["msg"]}
        if item["type"] in ("missing", "json_invalid"):
            parts.append(f"{field}: {item['msg']}")
        else:
            problem["value"] = item["input"]
            parts.append(f"{field} = {item['input']!r}: {item['msg']}")
        problems.append(problem)
    return InvalidRequest("invalid request: " + "; ".join(parts), {"errors": problems})


async def _read_body(request: web.Request, model: type[ModelT]) -> ModelT:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as error:
        raise _invalid_request(error) from None


def _json(model: BaseModel | list[BaseModel], status: int = 200) -> web.Response:
    if isinstance(model, list):
        body: object = [item.model_dump(mode="json", by_alias=True) for item in model]
    else:
        body = model.model_dump(mode="json", by_alias=True)
    return web.json_response(body, status=status)


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise InvalidRequest(
            f"missing query parameter {name}; {request.method} {request.path} needs "
            "cluster, containerID and ifname",
            {"field": name},
        )
    return value


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.post("/v1/pools")
async def post_pool(request: web.Request) -> web.Response:
    spec = await _read_body(request, PoolCreate)
    async with request.app[SESSIONMAKER].begin() as session:
        pool, created = await create_pool(session, spec)
        allocated = (await count_held_leases(session, [pool.id]))[pool.id]
        view = pool_view(pool, allocated)
    return _json(view, status=201 if created else 200)


@routes.get("/v1/pools")
async def get_pools(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER].begin() as session:
        pools = await read_pools(session)
        counts = await count_held_leases(session, [pool.id for pool in pools])
    return _json([pool_view(pool, counts[pool.id]) for pool in pools])


@routes.get("/v1/pools/{name}")
async def get_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[SESSIONMAKER].begin() as session:
        pool = await require_pool(session, name)
        allocated = (await count_held_leases(session, [pool.id]))[pool.id]
    return _json(pool_view(pool, allocated))


@routes.delete("/v1/pools/{name}")
async def remove_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[SESSIONMAKER].begin() as session:
        pool = await require_pool(session, name)
        view = pool_view(pool, 0)
        await delete_pool(session, name)
    return _json(view)


@routes.post("/v1/leases")
async def post_lease(request: web.Request) -> web.Response:
    lease_request = await _read_body(request, LeaseCreate)
    # The lock spans the whole transaction including its commit; otherwise a
    # second request could read the held addresses before the first commits.
    async with (
        request.app[POOL_LOCKS].for_pool(lease_request.pool),
        request.app[SESSIONMAKER].begin() as session,
    ):
        pool = await require_pool(session, lease_request.pool)
        lease, created = await allocate_lease(session, pool, layout_of(pool), lease_request)
        view = lease_view(lease)
    return _json(view, status=201 if created else 200)


@routes.delete("/v1/leases")
async def delete_leases(request: web.Request) -> web.Response:
    owner = Owner(
        cluster=_query(request, "cluster"),
        containerID=_query(request, "containerID"),
        ifname=_query(request, "ifname"),
    )
    async with request.app[SESSIONMAKER].begin() as session:
        leases = await release_leases(session, owner)
        views = [lease_view(lease) for lease in leases]
    return _json(list(views))


@routes.get("/v1/leases")
async def get_leases(request: web.Request) -> web.Response:
    pool_name = request.query.get("pool")
    node = request.query.get("node")
    state_text = request.query.get("state")
    states = None
    if state_text is not None:
        try:
            states = [LeaseState(state_text)]
        except ValueError:
            allowed = ", ".join(state.value for state in LeaseState)
            raise InvalidRequest(
                f"invalid query parameter state = {state_text!r}: use one of {allowed}",
                {"field": "state", "value": state_text},
            ) from None

    async with request.app[SESSIONMAKER].begin() as session:
        pool = None
        if pool_name is not None:
            pool = await read_pool(session, pool_name)
            if pool is None:
                raise PoolNotFound(pool_name)
        leases = await read_leases(session, pool=pool, node=node, states=states)
        views = [lease_view(lease) for lease in leases]
    return _json(list(views))
