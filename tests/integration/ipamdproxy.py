"""An HTTP proxy in front of a real ipamd that can hold chosen requests back.

Fault tests point the node daemon at the proxy to make ipamd slow for one
call (say, the confirm of a lease) while every other call goes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web


@dataclass
class IpamdProxy:
    target: str
    url: str = ""
    # (method, path) -> seconds to wait before forwarding.
    delays: dict[tuple[str, str], float] = field(default_factory=dict)
    # (method, path) of every request that arrived, in order.
    seen: list[tuple[str, str]] = field(default_factory=list)
    # Set when a delayed request starts waiting.
    held: asyncio.Event = field(default_factory=asyncio.Event)


PROXY_KEY = web.AppKey("proxy", IpamdProxy)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)


async def _forward(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    key = (request.method, request.path)
    proxy.seen.append(key)
    body = await request.read()
    delay = proxy.delays.get(key, 0.0)
    if delay:
        proxy.held.set()
        await asyncio.sleep(delay)
    session = request.app[SESSION_KEY]
    async with session.request(
        request.method,
        proxy.target + request.path_qs,
        data=body,
        headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
    ) as response:
        payload = await response.read()
        return web.Response(
            body=payload, status=response.status, content_type=response.content_type
        )


@asynccontextmanager
async def run_proxy(target: str) -> AsyncIterator[IpamdProxy]:
    """Serve a proxy to ``target`` on a free loopback port until the block ends."""
    proxy = IpamdProxy(target=target)
    app = web.Application()
    app[PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", _forward)
    async with aiohttp.ClientSession() as session:
        app[SESSION_KEY] = session
        # Requests still held back are dropped at the end, not awaited.
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        proxy.url = f"http://127.0.0.1:{port}"
        try:
            yield proxy
        finally:
            await runner.cleanup()
