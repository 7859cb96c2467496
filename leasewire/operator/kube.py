"""Direct reads from the Kubernetes API: pod listings and single pods and nodes.

Kopf's watches serve the handlers; the lease reconciliation needs more than a
watch can give: a complete listing whose start time is known, and a fresh read
of one pod right before a release. This module does those reads with the same
credentials that Kopf logs in with (the pod's service account, else the
kubeconfig), read anew for each pass so that a rotated token is picked up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500
"""Pods per page of a listing. The API server's own default page of kubectl is
500; it keeps each answer small without many round trips."""

REQUEST_TIMEOUT_S = 60.0
"""Seconds for one page or one read. A page of 500 pods is a few megabytes."""


class KubeError(Exception):
    """The Kubernetes API could not be reached or failed the request."""


@dataclass(frozen=True)
class PodIdentity:
    """The fields of a pod that the reconciliation compares: UID first, never the name alone."""

    uid: str
    namespace: str
    name: str


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Return the API server and credentials: the pod's service account, else the kubeconfig."""
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no Kubernetes credentials found: run in a pod with a service account, "
            "or set KUBECONFIG or ~/.kube/config"
        )
    return info


class KubeClient:
    """A short-lived reader of the Kubernetes API: open it for one pass, then close it."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._server = info.server.rstrip("/")
        ssl_context = info.as_ssl_context() if self._server.startswith("https:") else None
        self._session = aiohttp.ClientSession(
            headers=info.as_http_headers(),
            connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def list_pods(self, namespaces: list[str] | None) -> list[PodIdentity]:
        """List every pod of ``namespaces`` (None: all namespaces), page by page."""
        paths = (
            ["/api/v1/pods"]
            if namespaces is None
            else [f"/api/v1/namespaces/{namespace}/pods" for namespace in namespaces]
        )
        pods: list[PodIdentity] = []
        for path in paths:
            token = ""
            while True:
                params = {"limit": str(LIST_PAGE_SIZE)}
                if token:
                    params["continue"] = token
                page = await self._get(path, params)
                if page is None:
                    raise KubeError(f"GET {self._server}{path} returned 404")
                for item in page.get("items") or []:
                    pod = _identity(item)
                    if pod is not None:
                        pods.append(pod)
                token = (page.get("metadata") or {}).get("continue") or ""
                if not token:
                    break
        return pods

    async def read_pod(self, namespace: str, name: str) -> PodIdentity | None:
        """Read one pod; None when it does not exist."""
        item = await self._get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return None if item is None else _identity(item)

    async def node_exists(self, name: str) -> bool:
        return await self._get(f"/api/v1/nodes/{name}") is not None

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        url = self._server + path
        try:
            async with self._session.get(url, params=params) as response:
                if response.status == 404:
                    return None
                if response.status >= 400:
                    text = await response.text()
                    raise KubeError(f"GET {url} returned HTTP {response.status}: {text[:200]}")
                body: dict[str, Any] = await response.json(content_type=None)
                return body
        except TimeoutError:
            raise KubeError(f"GET {url} timed out after {REQUEST_TIMEOUT_S} s") from None
        except aiohttp.ClientError as error:
            raise KubeError(f"GET {url} failed: {error}") from error


def _identity(item: dict[str, Any]) -> PodIdentity | None:
    meta = item.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        # The API server gives every pod a UID; an item without one is no pod.
        log.warning("ignoring a listed pod without a UID: %.200r", meta)
        return None
    return PodIdentity(uid=uid, namespace=meta.get("namespace", ""), name=meta.get("name", ""))
