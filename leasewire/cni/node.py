"""The node daemon: serves the CNI shim over HTTP/1.1 on a root-only unix socket.

The shim sends ``POST /v1/cni`` with ``{"env": {CNI_*...}, "stdin": "<network
config>"}`` and gets ``{"stdout", "exitCode", "stderr"}`` back, always with
HTTP 200 once the body could be read; CNI errors travel inside ``stdout``.

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

from leasewire.cni.cniconfig import ERR_DECODE, FALLBACK_VERSION, CniError
from leasewire.cni.ipamclient import IpamClient
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


async def _cni_service(app: web.Application) -> AsyncIterator[None]:
    """Own the ipamd client session for the app's lifetime."""
    settings = app[SETTINGS_KEY]
    timeout = aiohttp.ClientTimeout(total=settings.ipamd_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[SERVICE_KEY] = CniService(
            ipam=IpamClient(session, settings.ipamd_url),
            drivers=DriverSet(),
            cluster=settings.cluster,
            node=settings.node_name,
        )
        yield


async def _remove_socket_file(app: web.Application) -> None:
    path = app[SETTINGS_KEY].socket_path
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _reply(reply: CniReply, status: int = 200) -> web.Response:
    body = {"stdout": reply.stdout, "exitCode": reply.exit_code, "stderr": reply.stderr}
    return web.json_response(body, status=status)


async def handle_cni(request: web.Request) -> web.Response:
    """Run one CNI call for the shim."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    env = body.get("env") if isinstance(body, dict) else None
    stdin = body.get("stdin") if isinstance(body, dict) else None
    if (
        not isinstance(env, dict)
        or not all(isinstance(key, str) and isinstance(value, str) for key, value in env.items())
        or not isinstance(stdin, str)
    ):
        error = CniError(
            ERR_DECODE,
            "invalid request to the node daemon: expected JSON {env: {name: value}, stdin: text}",
        )
        return _reply(CniReply(error.to_json(FALLBACK_VERSION), 1), status=400)

    reply = await request.app[SERVICE_KEY].handle(env, stdin)
    return _reply(reply)


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_node_app(settings: NodeSettings) -> web.Application:
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app.cleanup_ctx.append(_cni_service)
    app.on_cleanup.append(_remove_socket_file)
    app.router.add_post("/v1/cni", handle_cni)
    app.router.add_get("/healthz", handle_healthz)
    return app


def _bind_socket(path: Path) -> socket.socket:
    """Bind a unix socket at ``path`` with mode 0600, replacing a stale socket file.

    The socket is bound but not listening yet, so no client can connect before
    its mode is set.
    """
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

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError as error:
        sock.close()
        raise NodeStartError(f"failed to bind {path}: {error}") from error
    return sock


async def start_node(settings: NodeSettings) -> web.AppRunner:
    """Start serving the shim on the unix socket and return the runner.

    Call ``runner.cleanup()`` to stop; it also removes the socket file.
    """
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise NodeStartError(
            f"failed to create state directory {settings.state_dir}: {error}"
        ) from error
    sock = _bind_socket(settings.socket_path)

    runner = web.AppRunner(create_node_app(settings), handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
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
    """Make SIGTERM and SIGINT set ``stop``; return a function that restores the old handlers.

    Use this instead of ``loop.add_signal_handler`` in any process that runs
    drivers. pyroute2 forks a short-lived child to open a socket in another
    netns and ends it with SIGTERM. Through ``add_signal_handler`` the child
    shares the loop's signal wakeup fd, so that SIGTERM would stop the parent.
    A plain handler that checks the process id ignores signals in the child.
    """
    loop = asyncio.get_running_loop()
    pid = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() == pid:
            logger.info("Received %s", signal.Signals(signum).name)
            loop.call_soon_threadsafe(stop.set)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

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
