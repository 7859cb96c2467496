"""Fixtures and helpers for operator tests, a pytest plugin that each test module names.

The parts: kmock as the Kubernetes API, a real ipamd, the real operator.

kmock's Kubernetes emulator serves discovery, lists, watches and patches over
HTTP on a loopback port; Kopf logs in to it through a kubeconfig file, as it
would to a real API server. ipamd runs in the test's event loop on a
temporary SQLite file and its own loopback port. The operator runs with
short timers and grace periods so that a test waits seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kmock as kmocklib
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from kmock._internal import aiobus

from leasewire.ipamd.app import create_app
from leasewire.operator.app import create_settings, run_operator
from leasewire.operator.config import OperatorConfig

CLUSTER = "optest"
WAIT_SECONDS = 15.0
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

POOLS = "leasewire.io/v1alpha1/ippools"
PROFILES = "leasewire.io/v1alpha1/attachprofiles"
PODS = "v1/pods"
NODES = "v1/nodes"
PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait until ``check`` is true; fail naming ``what`` after WAIT_SECONDS."""
    timeout = WAIT_SECONDS
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class SeenRequest:
    """A request that ipamd received: method, path and the bearer token it came with."""

    method: str
    path: str
    token: str


@dataclass
class Ipamd:
    url: str
    session: aiohttp.ClientSession
    seen: list[SeenRequest] = field(default_factory=list)
    """Every request that ipamd received, in order, from the test and from operators."""

    def seen_from(self, token: str, method: str, path: str) -> int:
        """Count the requests ``method path`` that came with bearer token ``token``."""
        return sum(
            1
            for request in self.seen
            if (request.token, request.method, request.path) == (token, method, path)
        )

    async def call(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=json_body, params=params
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def lease(
        self, pool: str, *, uid: str, name: str, node: str = "node-a", namespace: str = "default"
    ) -> dict[str, Any]:
        body = {
            "pool": pool,
            "owner": {"cluster": CLUSTER, "containerID": f"ctr-{uid}", "ifname": "eth0"},
            "pod": {"namespace": namespace, "name": name, "uid": uid},
            "node": node,
        }
        status, payload = await self.call("POST", "/v1/leases", json_body=body)
        assert status in (200, 201), payload
        assert isinstance(payload, dict)
        return payload

    async def held_leases(self, pool: str) -> list[dict[str, Any]]:
        status, payload = await self.call("GET", "/v1/leases", params={"pool": pool})
        assert status == 200, payload
        items = payload.get("leases") if isinstance(payload, dict) else payload
        assert isinstance(items, list)
        return [item for item in items if item["state"] != "released"]


@pytest.fixture
async def ipamd(tmp_path: Path) -> AsyncIterator[Ipamd]:
    seen: list[SeenRequest] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        seen.append(SeenRequest(method=request.method, path=request.path, token=token))
        return await handler(request)

    app = create_app(f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}")
    app.middlewares.insert(0, record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Ipamd(url=f"http://{host}:{port}", session=session, seen=seen)
    await runner.cleanup()


class ApiServer(kmocklib.KubernetesEmulator):
    """kmock's emulator plus the metadata that a real API server keeps and Kopf relies on.

    Kopf guards its patches with a test of ``resourceVersion``, and the operator
    reports ``generation`` as ``observedGeneration``; the plain emulator sets neither.
    """

    resource_version = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.history: list[tuple[Any, int, dict[str, Any]]] = []
        self.lose: Callable[[kmocklib.Request], bool] | None = None
        """A test's choice of patches that get a success response but change nothing, as if lost."""
        self._buses = _RecordingBuses(self.history)

    async def _serve_list(self, request: kmocklib.Request) -> Any:
        answer: Any = await super()._serve_list(request)
        answer["metadata"]["resourceVersion"] = str(self.resource_version)
        return answer

    async def _serve_watch(self, request: kmocklib.Request) -> AsyncIterator[Any]:
        """Replay what changed since the listing's version, then stream, as an API server does.

        Without the replay, a change between Kopf's listing and its watch would be lost.
        """
        since = request.params.get("resourceVersion", "")
        if not since.isdigit():
            async for item in super()._serve_watch(request):
                yield item
            return
        async with self._lock:
            marker = await self._buses[request.resource].mark()  # type: ignore[index]
            missed = [
                event
                for resource, version, event in self.history
                if resource == request.resource and version > int(since)
            ]
        yield b""
        for event in missed:
            yield event
        async for event in marker:
            yield event

    async def _handle(self, request: kmocklib.Request) -> Any:
        if (
            self.lose is not None
            and request.action == kmocklib.action.UPDATE
            and isinstance(request.data, dict)
            and self.lose(request)
        ):
            request.data.clear()  # an empty merge patch changes nothing
        if request.resource is not None:
            self._stamp(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as error:
            # A real API server responds to a failed test operation with 422, which Kopf
            # takes as "changed meanwhile, retry on the next event" instead of an error.
            raise kmocklib.KubernetesError(
                status=422, reason="Invalid", message=str(error)
            ) from None

    def _stamp(self, request: kmocklib.Request) -> None:
        if request.action == kmocklib.action.CREATE and isinstance(request.data, dict):
            self.resource_version += 1
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta["generation"] = 1
            meta["resourceVersion"] = str(self.resource_version)
        elif request.action == kmocklib.action.UPDATE and request.name is not None:
            self.resource_version += 1
            version = str(self.resource_version)
            key: Any = (request.resource, request.namespace, request.name)
            current = self.objects[key].raw if key in self.objects else {}
            generation = int((current.get("metadata") or {}).get("generation") or 1)
            if isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in request.data and request.subresource is None:
                    meta["generation"] = generation + 1
            elif isinstance(request.data, list):
                # A JSON patch: the new version goes last, after Kopf's test of the old one.
                request.data.append(
                    {"op": "add", "path": "/metadata/resourceVersion", "value": version}
                )
                if request.subresource is None and any(
                    str(op.get("path", "")).startswith("/spec") for op in request.data
                ):
                    request.data.append(
                        {"op": "add", "path": "/metadata/generation", "value": generation + 1}
                    )


class _RecordingBuses(collections.defaultdict[Any, Any]):
    """kmock's per-resource event buses, each event also kept with its resourceVersion."""

    def __init__(self, history: list[tuple[Any, int, dict[str, Any]]]) -> None:
        super().__init__()
        self._history = history

    def __missing__(self, resource: Any) -> Any:
        bus = _RecordingBus(resource, self._history)
        self[resource] = bus
        return bus


class _RecordingBus(aiobus.Bus[Any]):
    def __init__(self, resource: Any, history: list[tuple[Any, int, dict[str, Any]]]) -> None:
        super().__init__()
        self._resource = resource
        self._history = history

    async def put(self, *items: Any) -> None:
        for item in items:
            meta = (item.get("object") or {}).get("metadata") or {}
            version = str(meta.get("resourceVersion"))
            if version.isdigit():
                self._history.append((self._resource, int(version), item))
        await super().put(*items)


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """Make kmock's fixture serve the emulator with API server metadata."""
    return {**kmock_options, "cls": ApiServer}


@pytest.fixture
def k8s(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    """kmock with the resources that the operator watches declared for API discovery."""
    kmock.resources[POOLS] = kmocklib.ResourceInfo(
        kind="IPPool",
        singular="ippool",
        namespaced=False,
        verbs=ALL_VERBS,
        subresources={"status"},
    )
    kmock.resources[PROFILES] = kmocklib.ResourceInfo(
        kind="AttachProfile",
        singular="attachprofile",
        namespaced=False,
        verbs=ALL_VERBS,
        subresources={"status"},
    )
    kmock.resources[PODS] = kmocklib.ResourceInfo(
        kind="Pod", singular="pod", namespaced=True, verbs=ALL_VERBS
    )
    kmock.resources[NODES] = kmocklib.ResourceInfo(
        kind="Node", singular="node", namespaced=False, verbs=ALL_VERBS
    )
    kmock.resources[PEERINGS] = kmocklib.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False, verbs=ALL_VERBS
    )
    # Kopf waits for the namespaces resource to be discoverable before it watches anything.
    kmock.resources["v1/namespaces"] = kmocklib.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=ALL_VERBS
    )
    return kmock


@pytest.fixture
def kubeconfig(
    k8s: kmocklib.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "kmock-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def operator_config(ipamd: Ipamd) -> OperatorConfig:
    return OperatorConfig(
        ipamd_url=ipamd.url,
        cluster=CLUSTER,
        standalone=True,
        pool_refresh_seconds=0.3,
        pod_grace_seconds=0.5,
        node_grace_seconds=0.5,
        retry_seconds=0.3,
    )


class OperatorThread:
    """One operator in a thread with its own event loop, as in a process of its own.

    Kopf cancels every task that appeared in its event loop while it ran, so each
    operator gets a loop of its own. ``token`` is the bearer token it sends to
    ipamd, so that a test can count the requests of each operator.
    """

    def __init__(
        self,
        config: OperatorConfig,
        *,
        token: str = "",
        peering_lifetime: int = 60,
    ) -> None:
        if token:
            assert config.token_file is not None, "a token needs the config's token_file"
            config.token_file.write_text(token)
        self.config = config
        self.token = token
        self.settings = create_settings(config)
        self.settings.posting.enabled = False  # kmock would store the events; no test reads them
        self.settings.watching.reconnect_backoff = 0.1
        self.settings.queueing.idle_timeout = 0.1
        self.settings.peering.lifetime = peering_lifetime
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"operator {token}", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                run_operator(
                    self.config,
                    settings=self.settings,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as error:
            self._errors.append(error)

    async def start(self) -> None:
        """Start the operator and wait until it runs.

        The waits happen in a worker thread: kmock and ipamd run in the test's
        event loop, and the operator talks to them while it starts and stops.
        """
        self._thread.start()
        started = await asyncio.to_thread(self._ready.wait, WAIT_SECONDS)
        assert started, f"the operator did not start: {self._errors}"

    async def stop(self) -> None:
        """Stop the operator as SIGTERM would, and wait until it has stopped."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join, WAIT_SECONDS)
        assert not self._thread.is_alive(), "the operator did not stop"
        assert not self._errors, self._errors


@pytest.fixture
async def operator(
    operator_config: OperatorConfig, kubeconfig: Path
) -> AsyncIterator[OperatorThread]:
    """Run one operator until the test ends."""
    running = OperatorThread(operator_config)
    await running.start()
    yield running
    await running.stop()


class KubeApi:
    """Requests to the emulated API server, sent over HTTP as kubectl would send them."""

    def __init__(self, emulator: ApiServer) -> None:
        self.emulator = emulator
        self.url = str(emulator.url).rstrip("/")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=headers) as response,
        ):
            payload = await response.json(content_type=None)
            assert response.status < 400, payload
            return payload

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """Return the stored object, or None when it does not exist or is deleted."""
        key = (kmocklib.resource(resource), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.emulator.objects[key].raw
        return raw

    def condition(self, resource: str, name: str, type_: str) -> dict[str, Any]:
        """Return the status condition ``type_`` of an object, or {} when it has none."""
        body = self.get(resource, name) or {}
        for item in (body.get("status") or {}).get("conditions") or []:
            if item["type"] == type_:
                return dict(item)
        return {}

    wait = staticmethod(eventually)


@pytest.fixture
def kube(k8s: kmocklib.KubernetesEmulator) -> KubeApi:
    assert isinstance(k8s, ApiServer)
    return KubeApi(k8s)
