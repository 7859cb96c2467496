"""``leasewire ipamd``: serve the IPAM API, or only upgrade the database schema."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvloop
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from leasewire.ipamd.app import create_app
from leasewire.ipamd.db import upgrade_schema
from leasewire.ipamd.state import IpamSettings
from leasewire.ipamd.workers import WorkerSpec, run_workers
from leasewire.listen import parse_listen

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
"""Seconds that running requests get to finish after SIGTERM or SIGINT. A
request is one short transaction, so 10 s leaves a wide margin."""


def serve(spec: WorkerSpec) -> None:
    """Serve the API in this process until SIGTERM or SIGINT.

    With more than one worker, every worker binds the port with SO_REUSEPORT;
    a lone one does not, so that a second ipamd on its port fails to start.
    """
    # run_app turns SIGTERM and SIGINT into a graceful shutdown: it stops
    # accepting connections, lets running requests finish, then runs the
    # cleanup context, which disposes of the database engine.
    web.run_app(
        create_app(spec.database_url, IpamSettings(pending_ttl_seconds=spec.pending_ttl_seconds)),
        # uvloop spends less CPU per request than asyncio's loop (docs/benchmarks.md).
        loop=uvloop.new_event_loop(),
        host=spec.host,
        port=spec.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        reuse_port=spec.reuse_port or None,
        print=None,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``leasewire ipamd``: ``serve`` upgrades the schema, then serves the API.

    ``migrate`` only upgrades the schema. Returns the exit status.
    """
    database_url: str = args.database
    try:
        url = make_url(database_url)
    except ArgumentError as error:
        log.error("invalid --database %r: %s", database_url, error)
        return 2
    shown_url = url.render_as_string(hide_password=True)

    if args.action == "migrate":
        try:
            asyncio.run(upgrade_schema(database_url))
        except (SQLAlchemyError, OSError) as error:
            log.error("schema upgrade of %s failed: %s", shown_url, error)
            return 1
        return 0

    try:
        host, port = parse_listen(args.listen)
    except ValueError as error:
        log.error("%s", error)
        return 2

    workers: int = getattr(args, "workers", 1)
    if workers < 1:
        log.error("invalid --workers %d: give 1 or more processes", workers)
        return 2
    spec = WorkerSpec(
        database_url=database_url,
        host=host,
        port=port,
        pending_ttl_seconds=getattr(args, "pending_ttl", 120.0),
        log_level=logging.getLogger().getEffectiveLevel(),
        reuse_port=workers > 1,
    )
    log.info("ipamd starting on %s:%d with database %s", host, port, shown_url)
    try:
        if workers == 1:
            serve(spec)
        else:
            if url.get_backend_name() == "sqlite":
                log.error(
                    "invalid --workers %d with SQLite database %s: SQLite has one writer per "
                    "file, so use --workers 1, or PostgreSQL for several workers",
                    workers,
                    shown_url,
                )
                return 2
            # Once here, so that the workers do not race to upgrade the schema.
            asyncio.run(upgrade_schema(database_url))
            status = run_workers(workers, spec, serve)
            log.info("ipamd stopped")
            return status
    except (SQLAlchemyError, OSError) as error:
        log.error(
            "ipamd failed to start on %s:%d with database %s: %s", host, port, shown_url, error
        )
        return 1
    log.info("ipamd stopped")
    return 0
