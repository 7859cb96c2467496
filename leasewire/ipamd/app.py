"""The ipamd aiohttp application: factory, state, error middleware.

``create_app`` returns an application whose cleanup context opens the
database engine, upgrades the schema to the newest Alembic revision and
disposes of the engine on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc

from leasewire.api import ErrorBody
from leasewire.ipamd.allocate import AllocatorState
from leasewire.ipamd.batch import allocation_writer
from leasewire.ipamd.db import alembic_config, create_engine, create_sessionmaker, upgrade_engine
from leasewire.ipamd.errors import DatabaseUnavailable, IpamError
from leasewire.ipamd.lifecycle import lifecycle_task
from leasewire.ipamd.metrics import Metrics
from leasewire.ipamd.routes import routes
from leasewire.ipamd.routes_attach import attach_routes
from leasewire.ipamd.routes_pools import pool_routes
from leasewire.ipamd.state import (
    ALLOCATOR,
    DATABASE_URL,
    ENGINE,
    METRICS,
    SCHEMA_HEAD,
    SESSIONMAKER,
    SETTINGS,
    WRITE_GATE,
    IpamSettings,
    WriteGate,
)

log = logging.getLogger(__name__)

# Codes for the HTTP errors that aiohttp itself raises (unknown path, wrong method).
_HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


# Errors that mean "the database did not answer": the transaction was rolled
# back (or never began), so the client may simply retry.
_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
    TimeoutError,
)

RETRY_AFTER_S = 1
"""Seconds a client waits before retrying after database_unavailable."""


def error_response(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    details: dict[str, object] | None = None,
) -> web.Response:
    request.app[METRICS].errors[code] += 1
    body = ErrorBody(code=code, message=message, details=details)
    response = web.json_response(body.model_dump(mode="json", exclude_none=True), status=status)
    if code == DatabaseUnavailable.code:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn domain errors, aiohttp HTTP errors and crashes into JSON error bodies."""
    try:
        response: web.StreamResponse = await handler(request)
    except IpamError as error:
        log.info("%s %s failed with %s: %s", request.method, request.path, error.code, error)
        return error_response(request, error.status, error.code, error.message, error.details)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(error.status, f"http_{error.status}")
        message = f"{request.method} {request.path}: {error.reason}"
        return error_response(request, error.status, code, message)
    except _UNAVAILABLE as error:
        log.warning("%s %s: database unavailable: %s", request.method, request.path, error)
        return error_response(
            request,
            DatabaseUnavailable.status,
            DatabaseUnavailable.code,
            f"the database is unavailable ({type(error).__name__}); nothing was written, "
            f"retry in {RETRY_AFTER_S} s",
        )
    except Exception:
        log.exception("%s %s failed with an unexpected error", request.method, request.path)
        return error_response(
            request,
            500,
            "internal_error",
            "ipamd failed with an unexpected error; see the ipamd log",
        )
    return response


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[DATABASE_URL])
    try:
        await upgrade_engine(engine)
        app[ENGINE] = engine
        app[SESSIONMAKER] = create_sessionmaker(engine)
        app[WRITE_GATE] = WriteGate(serial=engine.dialect.name == "sqlite")
        yield
    finally:
        await engine.dispose()


def create_app(database_url: str, settings: IpamSettings | None = None) -> web.Application:
    """Build the ipamd application for the database at ``database_url`` (SQLAlchemy async URL)."""
    app = web.Application(middlewares=[error_middleware])
    app[DATABASE_URL] = database_url
    app[SETTINGS] = settings or IpamSettings()
    app[ALLOCATOR] = AllocatorState()
    app[METRICS] = Metrics()
    app[SCHEMA_HEAD] = ScriptDirectory.from_config(alembic_config()).get_current_head() or ""
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(allocation_writer)
    app.cleanup_ctx.append(lifecycle_task)
    app.add_routes(routes)
    app.add_routes(pool_routes)
    app.add_routes(attach_routes)
    return app
