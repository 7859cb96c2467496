"""State shared by the operator's handlers: the settings, the ipamd client and the reconciler.

The aiohttp session to ipamd can only be opened inside the running event loop,
so Kopf's startup handler opens it and its cleanup handler closes it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import kopf

from leasewire.operator.config import OperatorConfig
from leasewire.operator.ipamd import REQUEST_TIMEOUT_S, IpamdClient, read_token

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.settings = kopf.OperatorSettings()
        """Kopf's settings, replaced by the ones the operator runs with at startup."""
        self._session: aiohttp.ClientSession | None = None
        self._ipamd: IpamdClient | None = None
        self.node_labels: dict[str, dict[str, str]] = {}
        """Labels last sent to ipamd per node, so that a status-only node update sends nothing."""
        self.node_releases: dict[str, asyncio.Task[None]] = {}
        """Pending lease releases of deleted nodes, by node name."""

    @property
    def ipamd(self) -> IpamdClient:
        if self._ipamd is None:
            raise RuntimeError("the ipamd client is used before the operator's startup handler")
        return self._ipamd

    async def open(self) -> None:
        token = read_token(self.config.token_file)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        self._ipamd = IpamdClient(self._session, self.config.ipamd_url)
        log.info(
            "operator of cluster %s uses ipamd at %s", self.config.cluster, self.config.ipamd_url
        )

    async def close(self) -> None:
        for task in self.node_releases.values():
            task.cancel()
        await asyncio.gather(*self.node_releases.values(), return_exceptions=True)
        self.node_releases.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._ipamd = None
