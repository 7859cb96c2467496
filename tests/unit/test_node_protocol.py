"""The node daemon's two request formats: the raw one of the current shim and the JSON one of
earlier shims, which stays served for nodes that still have an older shim installed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from leasewire.cni import shim
from leasewire.cni.node import NodeSettings, create_node_app

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    # Nothing listens on the ipamd address: these calls never reach ipamd.
    settings = NodeSettings(
        socket_path=tmp_path / "node.sock",
        ipamd_url="http://127.0.0.1:9",
        cluster="prototest",
        node_name="prototest",
        state_dir=tmp_path / "state",
    )
    (tmp_path / "state").mkdir()
    async with TestClient(TestServer(create_node_app(settings))) as test_client:
        yield test_client


def _version_env() -> dict[str, str]:
    return {"CNI_COMMAND": "VERSION", "CNI_NETNS": "", "CNI_IFNAME": "", "CNI_ARGS": ""}


async def test_json_version(client: Client) -> None:
    body = {"env": _version_env(), "stdin": json.dumps({"cniVersion": "0.4.0"})}

    response = await client.post("/v1/cni", json=body)

    assert response.status == 200
    answer = await response.json()
    assert answer["exitCode"] == 0
    assert json.loads(answer["stdout"])["cniVersion"] == "0.4.0"
    assert "total" in answer["timings"]


async def test_json_invalid_config(client: Client) -> None:
    env = {**_version_env(), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}

    response = await client.post("/v1/cni", json={"env": env, "stdin": "not json"})

    answer = await response.json()
    assert answer["exitCode"] == 1
    assert json.loads(answer["stdout"])["code"] == 6


async def test_json_malformed_request(client: Client) -> None:
    response = await client.post("/v1/cni", json={"env": "ADD"})

    assert response.status == 400
    answer = await response.json()
    assert json.loads(answer["stdout"])["code"] == 6


async def test_raw_version(client: Client) -> None:
    env = {name.encode(): value.encode() for name, value in _version_env().items()}
    body = shim.request_body(env, b'{"cniVersion": "0.3.1"}')

    response = await client.post("/v1/cni/raw", data=body)

    assert response.status == 200
    assert response.headers["Leasewire-Exit-Code"] == "0"
    assert response.headers["Leasewire-Stderr-Length"] == "0"
    assert "total=" in response.headers["Leasewire-Timings"]
    assert json.loads(await response.read())["cniVersion"] == "0.3.1"


async def test_raw_stderr_before_stdout(client: Client) -> None:
    # GC with no list of valid attachments releases nothing and explains why on stderr.
    env = {b"CNI_COMMAND": b"GC", b"CNI_PATH": b"/opt/cni/bin"}
    config = json.dumps({"cniVersion": "1.1.0", "name": "prototest", "type": "leasewire"})

    response = await client.post("/v1/cni/raw", data=shim.request_body(env, config.encode()))

    payload = await response.read()
    split = int(response.headers["Leasewire-Stderr-Length"])
    assert response.headers["Leasewire-Exit-Code"] == "0"
    assert split > 0
    assert payload[split:] == b""


async def test_raw_malformed_request(client: Client) -> None:
    response = await client.post("/v1/cni/raw", data=b"CNI_COMMAND=ADD")

    assert response.status == 400
    assert response.headers["Leasewire-Exit-Code"] == "1"
    assert json.loads(await response.read())["code"] == 6
