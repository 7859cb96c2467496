"""``leasewire up``: ipamd on SQLite and the node daemon in one process.

This is the single-machine setup: after ``leasewire install-cni``, podman, ctr
or ``leasewire demo`` wire pods through it. It creates a default pool on first
start, so that the conflist that ``install-cni`` writes works as is.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from leasewire.cni.node import NodeSettings, NodeStartError, install_stop_handlers, start_node
from leasewire.defaultpool import default_pool_spec
from leasewire.ipamd.app import create_app
from leasewire.listen import base_url, parse_listen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllInOneSettings:
    state_dir: Path
    socket_path: Path
    host: str
    port: int
    pool_name: str
    pool_cidr: str

    @property
    def ipamd_url(self) -> str:
        return base_url(self.host, self.port)

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.state_dir / 'ipamd.db'}"


async def ensure_default_pool(url: str, spec: dict[str, object]) -> None:
    """Create the default pool unless a pool of that name exists already."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{url}/v1/pools", json=spec) as response,
    ):
        if response.status in (200, 201):
            log.info("default pool %s (%s) is ready", spec["name"], spec["cidr"])
            return
        body = await response.json(content_type=None)
        if response.status == 409 and body.get("code") == "pool_exists":
            # The operator may have changed the pool since; keep theirs.
            log.info(
                "pool %s exists with another spec; keeping it: %s",
                spec["name"],
                body.get("message"),
            )
            return
        raise RuntimeError(
            f"failed to create the default pool {spec['name']!r}: {body.get('message', body)}"
        )


async def run(settings: AllInOneSettings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    restore_signals = install_stop_handlers(stop)
    try:
        await _serve(settings, stop)
    finally:
        restore_signals()


async def _serve(settings: AllInOneSettings, stop: asyncio.Event) -> None:
    ipamd_runner = web.AppRunner(create_app(settings.database_url), handle_signals=False)
    await ipamd_runner.setup()
    try:
        site = web.TCPSite(ipamd_runner, settings.host, settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            raise RuntimeError(
                f"failed to listen on {settings.host}:{settings.port}: {error.strerror}; "
                "is another ipamd or 'leasewire up' running? Choose another port with --listen"
            ) from None
        log.info("ipamd serves %s with database %s", settings.ipamd_url, settings.database_url)

        await ensure_default_pool(
            settings.ipamd_url, default_pool_spec(settings.pool_name, settings.pool_cidr)
        )

        node_settings = NodeSettings(
            socket_path=settings.socket_path,
            ipamd_url=settings.ipamd_url,
            cluster="default",
            node_name=socket.gethostname(),
            state_dir=settings.state_dir / "node",
        )
        node_runner = await start_node(node_settings)
        try:
            log.info(
                "leasewire is up: node daemon on %s; stop with Ctrl-C or SIGTERM",
                settings.socket_path,
            )
            await stop.wait()
            log.info("stopping")
        finally:
            await node_runner.cleanup()
    finally:
        await ipamd_runner.cleanup()


def main(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
        default_pool_spec(args.pool, args.pool_cidr)
    except ValueError as error:
        log.error("%s", error)
        return 2
    settings = AllInOneSettings(
        state_dir=Path(args.state_dir),
        socket_path=Path(args.socket),
        host=host,
        port=port,
        pool_name=args.pool,
        pool_cidr=args.pool_cidr,
    )
    try:
        asyncio.run(run(settings))
    except (RuntimeError, NodeStartError) as error:
        log.error("%s", error)
        return 1
    log.info("stopped")
    return 0
