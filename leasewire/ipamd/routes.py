"""HTTP handlers of ipamd's lease API, version 1, and the operations endpoints.

Each handler validates its input with the wire models of ``leasewire.api``,
runs one transaction, and returns a wire model as JSON. Errors are raised as
domain errors and turned into JSON by the error middleware. Pool handlers are
in ``routes_pools.py``.
"""

from __future__ import annotations

import time
from datetime import datetime

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import (
    LeaseConfirm,
    LeaseCreate,
    LeaseCreated,
    LeaseGC,
    LeaseList,
    LeaseState,
    LeaseView,
    ReleasedLeases,
)
from leasewire.ipamd.batch import WRITER, in_transaction
from leasewire.ipamd.errors import InvalidRequest, IpamError, PoolNotFound
from leasewire.ipamd.httpio import json_answer, read_body
from leasewire.ipamd.leases import (
    LeaseFilter,
    confirm_leases,
    lease_view,
    read_leases,
    release_invalid,
    release_matching,
)
from leasewire.ipamd.metrics import CONTENT_TYPE, PoolUsage
from leasewire.ipamd.openapi import build_document, register_operation
from leasewire.ipamd.pools import count_leases, layout_of, read_pool, read_pools
from leasewire.ipamd.state import METRICS, SCHEMA_HEAD, transaction

routes = web.RouteTableDef()

_LIST_FILTERS = ("pool", "node", "cluster", "podUID", "containerID", "ifname", "network", "state")
_RELEASE_FILTERS = ("cluster", "containerID", "ifname", "podUID", "node", "network", "pool")


class NotReady(IpamError):
    status = 503
    code = "not_ready"


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    head = request.app[SCHEMA_HEAD]
    async with transaction(request.app) as session:
        current = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    if current != head:
        raise NotReady(
            f"database schema is at revision {current}, not at {head}; "
            "run 'leasewire ipamd migrate' or restart ipamd to upgrade it",
            {"schema": current, "head": head},
        )
    return web.json_response({"status": "ready", "schema": current})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    async with transaction(request.app) as session:
        pools = await read_pools(session)
        counts = await count_leases(session, [pool.id for pool in pools])
    usage = []
    for pool in pools:
        size = layout_of(pool).size
        held = counts[pool.id].held
        free = max(size - held - counts[pool.id].cooling, 0)
        usage.append(PoolUsage(name=pool.name, size=size, allocated=held, free=free))
    body = request.app[METRICS].render(usage)
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_document())


@routes.post("/v1/leases")
async def post_lease(request: web.Request) -> web.Response:
    body = await read_body(request, LeaseCreate)
    app = request.app
    started = time.perf_counter()
    # The allocation writer commits the lease (in a batch with others) before it answers.
    allocation = await app[WRITER].allocate(body)
    app[METRICS].allocation_seconds.observe(time.perf_counter() - started)
    # The LeaseCreated answer, built as a dict: the first lease, plus all of them in "leases".
    views = [view.model_dump(mode="json", by_alias=True) for view in allocation.views]
    answer = {**views[0], "leases": views}
    return web.json_response(answer, status=201 if allocation.created else 200)


@routes.post("/v1/leases/confirm")
async def post_confirm(request: web.Request) -> web.Response:
    body = await read_body(request, LeaseConfirm)

    async def confirm(session: AsyncSession) -> list[LeaseView]:
        return [lease_view(lease) for lease in await confirm_leases(session, body)]

    return json_answer(LeaseList(leases=await in_transaction(request.app, confirm)))


@routes.post("/v1/leases/gc")
async def post_gc(request: web.Request) -> web.Response:
    body = await read_body(request, LeaseGC)
    valid = {(item.container_id, item.ifname) for item in body.valid}

    async def release(session: AsyncSession) -> list[LeaseView]:
        leases = await release_invalid(
            session, cluster=body.cluster, node=body.node, network=body.network, valid=valid
        )
        return [lease_view(lease) for lease in leases]

    return json_answer(ReleasedLeases(released=await in_transaction(request.app, release)))


def _created_before(request: web.Request) -> datetime | None:
    value = request.query.get("createdBefore")
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(
            f"invalid query parameter createdBefore = {value!r}: expected an RFC 3339 time "
            "with a time zone, e.g. 2026-01-02T03:04:05Z",
            {"field": "createdBefore", "value": value},
        )
    return moment


def _release_filter(request: web.Request) -> tuple[LeaseFilter, str | None]:
    query = {name: request.query.get(name) or None for name in _RELEASE_FILTERS}
    identified = query["cluster"] is not None and (
        query["containerID"] is not None or query["podUID"] is not None or query["node"] is not None
    )
    if not identified:
        raise InvalidRequest(
            "missing query parameters: DELETE /v1/leases needs cluster together with "
            "containerID (and optionally ifname), podUID or node",
            {"field": "containerID" if query["cluster"] else "cluster"},
        )
    where = LeaseFilter(
        cluster=query["cluster"],
        container_id=query["containerID"],
        ifname=query["ifname"],
        pod_uid=query["podUID"],
        node=query["node"],
        network=request.query.get("network"),
        created_before=_created_before(request),
    )
    return where, query["pool"]


@routes.delete("/v1/leases")
async def delete_leases(request: web.Request) -> web.Response:
    where, pool_name = _release_filter(request)

    async def release(session: AsyncSession, where: LeaseFilter) -> list[LeaseView]:
        if pool_name is not None:
            pool = await read_pool(session, pool_name)
            if pool is None:
                raise PoolNotFound(pool_name)
            where = LeaseFilter(**{**where.__dict__, "pool_id": pool.id})
        return [lease_view(lease) for lease in await release_matching(session, where)]

    return json_answer(ReleasedLeases(released=await in_transaction(request.app, release, where)))


def _states(value: str | None) -> list[LeaseState] | None:
    if value is None or value == "held":
        return None
    if value == "all":
        return list(LeaseState)
    try:
        return [LeaseState(value)]
    except ValueError:
        allowed = ", ".join([*(state.value for state in LeaseState), "held", "all"])
        raise InvalidRequest(
            f"invalid query parameter state = {value!r}: use one of {allowed}",
            {"field": "state", "value": value},
        ) from None


@routes.get("/v1/leases")
async def get_leases(request: web.Request) -> web.Response:
    query = request.query
    states = _states(query.get("state"))
    pool_name = query.get("pool")

    async def read(session: AsyncSession) -> list[LeaseView]:
        pool_id = None
        if pool_name is not None:
            pool = await read_pool(session, pool_name)
            if pool is None:
                raise PoolNotFound(pool_name)
            pool_id = pool.id
        where = LeaseFilter(
            cluster=query.get("cluster"),
            container_id=query.get("containerID"),
            ifname=query.get("ifname"),
            pod_uid=query.get("podUID"),
            node=query.get("node"),
            network=query.get("network"),
            pool_id=pool_id,
        )
        return [lease_view(lease) for lease in await read_leases(session, where, states=states)]

    return json_answer(await in_transaction(request.app, read))


register_operation("GET", "/healthz", "Liveness: the process serves HTTP.")
register_operation(
    "GET", "/readyz", "Readiness: the database answers and its schema is current.", statuses=(200,)
)
register_operation("GET", "/metrics", "Prometheus metrics in the text exposition format.")
register_operation("GET", "/v1/openapi.json", "This OpenAPI document.")
register_operation(
    "POST",
    "/v1/leases",
    "Lease addresses to an owner: from the named pool(s), or from pools chosen by selectors.",
    request=LeaseCreate,
    response=LeaseCreated,
    statuses=(200, 201),
)
register_operation(
    "POST",
    "/v1/leases/confirm",
    "Mark the owner's pending leases bound and record the driver and its options.",
    request=LeaseConfirm,
    response=LeaseList,
)
register_operation(
    "POST",
    "/v1/leases/gc",
    "Release the leases of one node and network whose attachment is not in the valid list.",
    request=LeaseGC,
    response=ReleasedLeases,
)
register_operation(
    "DELETE",
    "/v1/leases",
    "Release every held lease that matches all filters (cluster plus containerID, podUID "
    "or node; optionally ifname, network, pool, createdBefore).",
    response=ReleasedLeases,
    query=(*_RELEASE_FILTERS, "createdBefore"),
)
register_operation(
    "GET",
    "/v1/leases",
    "List leases, held ones unless state is given (pending, bound, released, held, all).",
    response=LeaseView,
    response_is_list=True,
    query=_LIST_FILTERS,
)
