"""The node daemon: serves the CNI shim over HTTP/1.1 on a root-only unix socket.

The shim sends each CNI call with its environment and stdin to ``POST
/v1/cni/raw`` and gets stdout, stderr and the exit code back. Shims installed
by earlier versions send the same in JSON to ``POST /v1/cni``, which is still
served. ``shimwire`` describes both formats. The reply is HTTP 200 once the
body could be read, because CNI errors travel inside stdout.

``start_node`` starts the server and returns its runner, so that ``leasewire
up`` can run it in the same event loop as ipamd. ``main`` runs it alone until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from leasewire.cni.cniconfig import FALLBACK_VERSION, CniError
from leasewire.cni.ipamclient import IpamClient
from leasewire.cni.journal import AddJournal, AttachmentRecords
from leasewire.cni.profilecache import ProfileCache
from leasewire.cni.releasequeue import ReleaseQueue
from leasewire.cni.shimwire import (
    JSON_PATH,
    RAW_PATH,
    json_response,
    parse_json_request,
    parse_raw_request,
    raw_response,
)
from leasewire.cni.upkeep import recover_unfinished_adds
from leasewire.cni.verbs import CniReply, CniService
from leasewire.drivers.registry import DriverSet

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    # Unix socket the shim connects to; created with mode 0600.
    socket_path: Path
    # Base URL of ipamd's HTTP API, e.g. http://127.0.0.1:8470.
    ipamd_url: str
    # Cluster name recorded in every lease owner.
    cluster: str
    # Node name recorded in every lease.
    node_name: str
    # Directory for the daemon's local state.
    state_dir: Path
    # Limit for one ipamd request, in seconds. It stays well below the shim's
    # 60 s limit, so an ipamd that hangs becomes "try again later" in time.
    ipamd_timeout: float = 10.0
    # Seconds between replays of the queued lease releases while ipamd is unavailable.
    release_retry_interval: float = 5.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NodeSettings:
        return cls(
            socket_path=Path(args.socket),
            ipamd_url=args.ipamd,
            cluster=args.cluster,
            node_name=args.node_name or socket.gethostname(),
            state_dir=Path(args.state_dir),
        )


class NodeStartError(Exception):
    """The daemon cannot start; the message gives the cause and the setting to change."""


SETTINGS_KEY = web.AppKey("settings", NodeSettings)
SERVICE_KEY = web.AppKey("cni_service", CniService)
DRIVERS_KEY = web.AppKey("drivers", DriverSet)


async def _cni_service(app: web.Application) -> AsyncIterator[None]:
    """Own the ipamd client session and the release replays for the app's lifetime.

    Before the daemon serves, it undoes the ADDs that a killed predecessor
    left unfinished and replays the queued releases once.
    """
    settings = app[SETTINGS_KEY]
    timeout = aiohttp.ClientTimeout(total=settings.ipamd_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        service = CniService(
            ipam=IpamClient(session, settings.ipamd_url),
            drivers=app[DRIVERS_KEY],
            cluster=settings.cluster,
            node=settings.node_name,
            queue=ReleaseQueue(settings.state_dir),
            journal=AddJournal(settings.state_dir),
            profiles=ProfileCache(settings.state_dir),
            attachments=AttachmentRecords(settings.state_dir),
        )
        app[SERVICE_KEY] = service
        await recover_unfinished_adds(service)
        replays = asyncio.create_task(
            service.queue.run_replays(service.ipam, settings.release_retry_interval),
            name="release-queue-replays",
        )
        try:
            yield
        finally:
            replays.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replays


async def _remove_socket_file(app: web.Application) -> None:
    path = app[SETTINGS_KEY].socket_path
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


async def handle_cni_raw(request: web.Request) -> web.Response:
    """Run one CNI call sent in the raw format of the current shim."""
    try:
        env, stdin = parse_raw_request(await request.read())
    except CniError as error:
        return raw_response(CniReply(error.to_json(FALLBACK_VERSION), 1), status=400)
    reply = await request.app[SERVICE_KEY].handle(env, stdin)
    return raw_response(reply)


async def handle_cni_json(request: web.Request) -> web.Response:
    """Run one CNI call sent in the JSON format of earlier shims."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    try:
        env, stdin = parse_json_request(body)
    except CniError as error:
        return json_response(CniReply(error.to_json(FALLBACK_VERSION), 1), status=400)
    reply = await request.app[SERVICE_KEY].handle(env, stdin)
    return json_response(reply)


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_node_app(settings: NodeSettings, drivers: DriverSet | None = None) -> web.Application:
    """Build the node daemon's app; ``drivers`` replaces the registry's driver set."""
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[DRIVERS_KEY] = drivers if drivers is not None else DriverSet()
    app.cleanup_ctx.append(_cni_service)
    app.on_cleanup.append(_remove_socket_file)
    app.router.add_post(RAW_PATH, handle_cni_raw)
    app.router.add_post(JSON_PATH, handle_cni_json)
    app.router.add_get("/healthz", handle_healthz)
    return app


def _clear_socket_path(path: Path) -> None:
    """Remove a stale socket file at ``path``; raise if a live daemon or another file is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise NodeStartError(
                f"{path} exists and is not a socket; remove it or choose another --socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            logger.info("Removing stale socket %s", path)
            path.unlink()
        else:
            raise NodeStartError(
                f"another process already serves {path}; stop it or choose another --socket"
            )
        finally:
            probe.close()


def _bind_socket(path: Path) -> socket.socket:
    """Bind a unix socket at ``path`` with mode 0600.

    The socket is bound but not listening yet, so no client can connect before
    its mode is set.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError as error:
        sock.close()
        raise NodeStartError(f"failed to bind {path}: {error}") from error
    return sock


async def start_node(settings: NodeSettings, drivers: DriverSet | None = None) -> web.AppRunner:
    """Start serving the shim on the unix socket and return the runner.

    Call ``runner.cleanup()`` to stop; it also removes the socket file.
    """
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise NodeStartError(
            f"failed to create state directory {settings.state_dir}: {error}"
        ) from error
    _clear_socket_path(settings.socket_path)
    # Set up before binding: setup undoes unfinished ADDs, which must be done
    # before the socket file tells anyone that the daemon is ready.
    runner = web.AppRunner(create_node_app(settings, drivers), handle_signals=False)
    await runner.setup()
    sock: socket.socket | None = None
    try:
        sock = _bind_socket(settings.socket_path)
        await web.SockSite(runner, sock).start()
    except BaseException:
        if sock is not None:
            sock.close()
        await runner.cleanup()
        raise
    logger.info(
        "Node daemon %s serving %s; ipamd at %s, cluster %s",
        settings.node_name,
        settings.socket_path,
        settings.ipamd_url,
        settings.cluster,
    )
    return runner


def install_stop_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop``; return a function that removes the handlers."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        logger.info("Received %s", signum.name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)

    def restore() -> None:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    return restore


async def run_node(settings: NodeSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = await start_node(settings)
    stop = asyncio.Event()
    restore_signals = install_stop_handlers(stop)
    try:
        await stop.wait()
        logger.info("Node daemon stopping")
    finally:
        restore_signals()
        await runner.cleanup()


def main(args: argparse.Namespace) -> int:
    settings = NodeSettings.from_args(args)
    try:
        asyncio.run(run_node(settings))
    except NodeStartError as error:
        logger.error("%s", error)
        return 1
    except PermissionError as error:
        if error.errno == errno.EPERM:
            logger.error("The node daemon needs root (CAP_NET_ADMIN): %s", error)
            return 1
        raise
    return 0
