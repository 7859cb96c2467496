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

from leasewire.api import ErrorBody
from leasewire.ipamd.db import create_engine, create_sessionmaker, upgrade_engine
from leasewire.ipamd.errors import IpamError
from leasewire.ipamd.routes import routes
from leasewire.ipamd.state import DATABASE_URL, ENGINE, POOL_LOCKS, SESSIONMAKER, PoolLocks

log = logging.getLogger(__name__)

# Codes for the HTTP errors that aiohttp itself raises (unknown path, wrong method).
_HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def error_response(
    status: int, code: str, message: str, details: dict[str, object] | None = None
) -> web.Response:
    body = ErrorBody(code=code, message=message, details=details)
    return web.json_response(body.model_dump(mode="json", exclude_none=True), status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn domain errors, aiohttp HTTP errors and crashes into JSON error bodies."""
    try:
        response: web.StreamResponse = await handler(request)
    except IpamError as error:
        log.info("%s %s failed with %s: %s", request.method, request.path, error.code, error)
        return error_response(error.status, error.code, error.message, error.details)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(error.status, f"http_{error.status}")
        message = f"{request.method} {request.path}: {error.reason}"
        return error_response(error.status, code, message)
    except Exception:
        log.exception("%s %s failed with an unexpected error", request.method, request.path)
        return error_response(
            500, "internal_error", "ipamd failed with an unexpected error; see the ipamd log"
        )
    return response


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[DATABASE_URL])
    try:
        await upgrade_engine(engine)
        app[ENGINE] = engine
        app[SESSIONMAKER] = create_sessionmaker(engine)
        yield
    finally:
        await engine.dispose()


def create_app(database_url: str) -> web.Application:
    """Build the ipamd application for the database at ``database_url`` (SQLAlchemy async URL)."""
    app = web.Application(middlewares=[error_middleware])
    app[DATABASE_URL] = database_url
    app[POOL_LOCKS] = PoolLocks()
    app.cleanup_ctx.append(_database)
    app.add_routes(routes)
    return app
