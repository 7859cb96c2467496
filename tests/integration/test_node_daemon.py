"""The node daemon started in-process with start_node: its socket, and its
replies when ipamd cannot be reached."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from leasewire.cni.node import NodeSettings, NodeStartError, start_node
from leasewire.drivers.netlink import host_veth_name

from .conftest import SHIM, link_exists, unique_name
from .daemons import free_port


def settings_for(directory: Path, ipamd_url: str, timeout: float = 10.0) -> NodeSettings:
    return NodeSettings(
        socket_path=directory / "node.sock",
        ipamd_url=ipamd_url,
        cluster="itest",
        node_name="itest-node",
        state_dir=directory / "state",
        ipamd_timeout=timeout,
    )


@pytest.fixture
def daemon_dir(session_dir: Path) -> Path:
    directory = session_dir / unique_name("inproc-")
    directory.mkdir()
    return directory


async def run_shim(socket_path: Path, command: str, netns: str, bridge: str) -> dict[str, object]:
    config = {
        "cniVersion": "1.0.0",
        "name": "itestnet",
        "type": "leasewire",
        "pool": "unused",
        "bridge": bridge,
        "socket": str(socket_path),
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "pod-noipamd",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "",
        "CNI_PATH": "/opt/cni/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(SHIM),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(json.dumps(config).encode()), 60)
    assert process.returncode != 0, stdout
    answer = json.loads(stdout)
    assert isinstance(answer, dict)
    return answer


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A loopback TCP server that accepts connections and never responds."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_start_node_socket_root_only(daemon_dir: Path) -> None:
    settings = settings_for(daemon_dir, "http://127.0.0.1:1")

    runner = await start_node(settings)
    try:
        mode = settings.socket_path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        await runner.cleanup()

    assert not settings.socket_path.exists()


async def test_start_node_replaces_stale_socket(daemon_dir: Path) -> None:
    settings = settings_for(daemon_dir, "http://127.0.0.1:1")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(settings.socket_path))
    stale.close()

    runner = await start_node(settings)

    await runner.cleanup()


async def test_start_node_refuses_live_socket(daemon_dir: Path) -> None:
    settings = settings_for(daemon_dir, "http://127.0.0.1:1")
    runner = await start_node(settings)
    try:
        with pytest.raises(NodeStartError, match="already serves"):
            await start_node(settings)
        assert settings.socket_path.exists()
    finally:
        await runner.cleanup()


async def test_add_with_ipamd_down_returns_11(
    daemon_dir: Path, make_netns: Callable[[], str]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    runner = await start_node(settings_for(daemon_dir, endpoint))
    try:
        answer = await run_shim(
            daemon_dir / "node.sock", "ADD", f"/run/netns/{make_netns()}", unique_name()
        )
    finally:
        await runner.cleanup()

    assert answer["code"] == 11
    assert endpoint in str(answer["msg"])
    assert not link_exists(host_veth_name("pod-noipamd", "eth0"))


async def test_add_with_ipamd_hanging_times_out(
    daemon_dir: Path, make_netns: Callable[[], str], silent_server: str
) -> None:
    runner = await start_node(settings_for(daemon_dir, silent_server, timeout=1.0))
    try:
        answer = await run_shim(
            daemon_dir / "node.sock", "ADD", f"/run/netns/{make_netns()}", unique_name()
        )
    finally:
        await runner.cleanup()

    assert answer["code"] == 11
    assert "timed out" in str(answer["msg"])
