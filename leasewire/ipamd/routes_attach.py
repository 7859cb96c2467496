"""HTTP handlers of ipamd's attach profile and node API, version 1."""

from __future__ import annotations

import re

from aiohttp import web

from leasewire.api import AttachProfileSpec, AttachProfileView, NodeSpec, NodeView
from leasewire.ipamd.errors import InvalidRequest, IpamError
from leasewire.ipamd.httpio import json_answer, read_body
from leasewire.ipamd.nodes import delete_node, node_view, read_nodes, upsert_node
from leasewire.ipamd.openapi import register_operation
from leasewire.ipamd.profiles import (
    ProfileNotFound,
    delete_profile,
    profile_view,
    read_profile,
    read_profiles,
    upsert_profile,
)
from leasewire.ipamd.state import transaction

attach_routes = web.RouteTableDef()

# Kubernetes object names (DNS subdomain): AttachProfile and Node resources use them.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


class NodeNotFound(IpamError):
    status = 404
    code = "node_not_found"


def _name(request: web.Request, kind: str) -> str:
    name = request.match_info["name"]
    if NAME_PATTERN.match(name) is None:
        raise InvalidRequest(
            f"invalid {kind} name {name!r}: use up to 253 lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit",
            {"field": "name", "value": name},
        )
    return name


@attach_routes.put("/v1/attach-profiles/{name}")
async def put_profile(request: web.Request) -> web.Response:
    name = _name(request, "attach profile")
    spec = await read_body(request, AttachProfileSpec)
    async with transaction(request.app) as session:
        profile, created = await upsert_profile(session, name, spec)
        view = profile_view(profile)
    return json_answer(view, status=201 if created else 200)


@attach_routes.get("/v1/attach-profiles")
async def get_profiles(request: web.Request) -> web.Response:
    async with transaction(request.app) as session:
        views = [profile_view(profile) for profile in await read_profiles(session)]
    return json_answer(views)


@attach_routes.get("/v1/attach-profiles/{name}")
async def get_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with transaction(request.app) as session:
        profile = await read_profile(session, name)
        if profile is None:
            raise ProfileNotFound(name)
        view = profile_view(profile)
    return json_answer(view)


@attach_routes.delete("/v1/attach-profiles/{name}")
async def remove_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with transaction(request.app) as session:
        view = profile_view(await delete_profile(session, name))
    return json_answer(view)


@attach_routes.put("/v1/nodes/{name}")
async def put_node(request: web.Request) -> web.Response:
    name = _name(request, "node")
    spec = await read_body(request, NodeSpec)
    async with transaction(request.app) as session:
        node, created = await upsert_node(session, name, spec)
        view = node_view(node)
    return json_answer(view, status=201 if created else 200)


@attach_routes.get("/v1/nodes")
async def get_nodes(request: web.Request) -> web.Response:
    cluster = request.query.get("cluster") or None
    async with transaction(request.app) as session:
        views = [node_view(node) for node in await read_nodes(session, cluster)]
    return json_answer(views)


@attach_routes.delete("/v1/nodes/{name}")
async def remove_node(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    cluster = request.query.get("cluster") or "default"
    async with transaction(request.app) as session:
        node = await delete_node(session, cluster, name)
        if node is None:
            raise NodeNotFound(
                f"node {name!r} not found in cluster {cluster!r}; "
                "name the cluster with ?cluster= if it is not 'default'",
                {"node": name, "cluster": cluster},
            )
        view = node_view(node)
    return json_answer(view)


register_operation(
    "PUT",
    "/v1/attach-profiles/{name}",
    "Create or replace an attach profile: node selector, driver, options, priority.",
    request=AttachProfileSpec,
    response=AttachProfileView,
    statuses=(200, 201),
)
register_operation(
    "GET",
    "/v1/attach-profiles",
    "List attach profiles by name.",
    response=AttachProfileView,
    response_is_list=True,
)
register_operation(
    "GET", "/v1/attach-profiles/{name}", "Show one attach profile.", response=AttachProfileView
)
register_operation(
    "DELETE",
    "/v1/attach-profiles/{name}",
    "Delete an attach profile; leases keep the driver they were confirmed with.",
    response=AttachProfileView,
)
register_operation(
    "PUT",
    "/v1/nodes/{name}",
    "Create a node or replace its labels.",
    request=NodeSpec,
    response=NodeView,
    statuses=(200, 201),
)
register_operation(
    "GET",
    "/v1/nodes",
    "List nodes, of one cluster with ?cluster=.",
    response=NodeView,
    response_is_list=True,
    query=("cluster",),
)
register_operation(
    "DELETE",
    "/v1/nodes/{name}",
    "Delete a node's labels (?cluster=, default 'default').",
    response=NodeView,
    query=("cluster",),
)
