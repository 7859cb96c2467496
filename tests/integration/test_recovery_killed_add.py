"""A node daemon killed in the middle of an ADD, restarted: it removes the
interface before it releases the addresses, through Debian's host-local IPAM
plugin when that allocated them, and keeps ipamd's lease bound while the
interface cannot be removed.

The ADD is paused inside the attach driver by a third-party driver (the bridge
driver plus a wait), installed with pip from tests/fixtures/stall-driver, or
inside the IPAM plugin by a shell wrapper around host-local that delays or
fails its ADD.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leasewire.cni.journal import JOURNAL_DIRECTORY
from leasewire.drivers.netlink import host_veth_name

from .conftest import (
    CLUSTER,
    NODE,
    ShimOutput,
    exec_shim,
    free_cidr,
    ip,
    link_exists,
    unique_name,
)
from .daemons import Ipamd, install_fixture_driver, start_node_daemon, stop
from .test_faults import bound, held, make_pool, wait_until

CNI_PATH = "/usr/lib/cni"


@pytest.fixture(scope="module")
def stall_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the stall driver into a directory of its own with pip, as a user would."""
    return install_fixture_driver("stall-driver", tmp_path_factory.mktemp("stall-driver"))


@pytest.fixture
def bridge_name() -> Iterator[str]:
    name = unique_name()
    yield name
    ip("link", "del", name, check=False)


def allocations(data_dir: Path) -> list[str]:
    """Return the addresses that host-local holds: its files named like an IP."""
    found = []
    for path in data_dir.rglob("*"):
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        found.append(path.name)
    return found


async def run_shim(
    command: str, container_id: str, netns: str, config: dict[str, Any], cni_path: str = CNI_PATH
) -> ShimOutput:
    return await exec_shim(
        command, container_id, netns, config, pod_name="recovery", cni_path=cni_path
    )


def daemon_env(stall_site: Path) -> dict[str, str]:
    search_path = [str(stall_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(search_path)}


async def kill_mid_add(
    directory: Path,
    ipamd: Ipamd,
    env: dict[str, str] | None,
    netns: str,
    config: dict[str, Any],
    container_id: str,
    *,
    paused: tuple[Callable[[], bool], str] | None = None,
    cni_path: str = CNI_PATH,
) -> ShimOutput:
    """Start a node daemon, kill it once ADD is ``paused``, and return the shim's output.

    ``paused`` is a check and its description. By default it waits for the
    veth, because the stall driver pauses ADD once the pod is wired.
    """
    if paused is None:
        veth = host_veth_name(container_id, "eth0")
        paused = (lambda: link_exists(veth), "the veth")
    _, process = start_node_daemon(directory, ipamd.url, cluster=CLUSTER, node_name=NODE, env=env)
    try:
        add = asyncio.create_task(run_shim("ADD", container_id, netns, config, cni_path))
        await wait_until(*paused)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return await add
    finally:
        stop(process)


async def test_killed_add_releases_host_local_allocation(
    session_dir: Path,
    ipamd: Ipamd,
    stall_site: Path,
    bridge_name: str,
    make_netns: Callable[[], str],
    tmp_path: Path,
) -> None:
    directory = session_dir / unique_name("recovery-")
    directory.mkdir()
    data_dir = tmp_path / "host-local"
    hold = tmp_path / "hold"
    hold.touch()
    netns = f"/run/netns/{make_netns()}"
    veth = host_veth_name("pod-crash", "eth0")
    config: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "recoverynet",
        "type": "leasewire",
        "driver": "stall",
        "bridge": bridge_name,
        "holdWhile": str(hold),
        "socket": str(directory / "node.sock"),
        "ipam": {"type": "host-local", "subnet": str(free_cidr()), "dataDir": str(data_dir)},
    }
    env = daemon_env(stall_site)

    killed = await kill_mid_add(directory, ipamd, env, netns, config, "pod-crash")
    allocated = allocations(data_dir)
    journaled = list((directory / "state" / JOURNAL_DIRECTORY).glob("*.json"))

    hold.unlink()
    _, process = await asyncio.to_thread(
        start_node_daemon, directory, ipamd.url, cluster=CLUSTER, node_name=NODE, env=env
    )
    try:
        # The restarted daemon undid the unfinished ADD before serving.
        left = allocations(data_dir)
        link_left = link_exists(veth)
        retried = await run_shim("ADD", "pod-crash", netns, config)
        deleted = await run_shim("DEL", "pod-crash", netns, config)
    finally:
        stop(process)

    assert killed.exit_code != 0
    assert killed.json["code"] == 11, killed
    assert len(allocated) == 1
    assert len(journaled) == 1
    assert left == []
    assert not link_left
    assert retried.exit_code == 0, retried
    assert deleted.exit_code == 0, deleted
    assert allocations(data_dir) == []


async def test_killed_add_with_stuck_interface_keeps_lease(
    session_dir: Path,
    ipamd: Ipamd,
    stall_site: Path,
    bridge_name: str,
    make_netns: Callable[[], str],
    tmp_path: Path,
) -> None:
    directory = session_dir / unique_name("recovery-")
    directory.mkdir()
    pool = make_pool(ipamd)
    hold = tmp_path / "hold"
    hold.touch()
    fail_detach = tmp_path / "fail-detach"
    netns = f"/run/netns/{make_netns()}"
    veth = host_veth_name("pod-stuck", "eth0")
    config: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "recoverynet",
        "type": "leasewire",
        "pool": pool.name,
        "driver": "stall",
        "bridge": bridge_name,
        "holdWhile": str(hold),
        "failDetachWhile": str(fail_detach),
        "socket": str(directory / "node.sock"),
    }
    env = daemon_env(stall_site)

    killed = await kill_mid_add(directory, ipamd, env, netns, config, "pod-stuck")
    fail_detach.touch()
    hold.unlink()
    _, process = await asyncio.to_thread(
        start_node_daemon, directory, ipamd.url, cluster=CLUSTER, node_name=NODE, env=env
    )
    try:
        # The restarted daemon could not remove the interface, so the lease must stay.
        link_after_restart = link_exists(veth)
        bound_after_restart = bound(ipamd, pool, "pod-stuck")
        fail_detach.unlink()
        deleted = await run_shim("DEL", "pod-stuck", netns, config)
    finally:
        stop(process)

    assert killed.exit_code != 0
    assert killed.json["code"] == 11, killed
    assert link_after_restart
    assert len(bound_after_restart) == 1
    assert deleted.exit_code == 0, deleted
    assert not link_exists(veth)
    assert held(ipamd, pool, "pod-stuck") == []


def wrapped_host_local(directory: Path, hold: Path, fail: Path) -> Path:
    """Write an IPAM plugin that runs host-local, then on ADD waits while ``hold``
    exists and fails when ``fail`` exists; return its directory, for CNI_PATH."""
    directory.mkdir()
    plugin = directory / "held-host-local"
    plugin.write_text(
        "#!/bin/sh\n"
        "input=$(cat)\n"
        f"output=$(printf '%s' \"$input\" | {CNI_PATH}/host-local)\n"
        "status=$?\n"
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        f"  while [ -e {hold} ]; do sleep 0.05; done\n"
        f"  if [ -e {fail} ]; then\n"
        '    echo \'{"cniVersion": "1.0.0", "code": 999, "msg": "made to fail"}\'\n'
        "    exit 1\n"
        "  fi\n"
        "fi\n"
        "printf '%s' \"$output\"\n"
        "exit $status\n"
    )
    plugin.chmod(0o755)
    return directory


def held_plugin_config(directory: Path, bridge_name: str, data_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "recoverynet",
        "type": "leasewire",
        "driver": "bridge",
        "bridge": bridge_name,
        "socket": str(directory / "node.sock"),
        "ipam": {
            "type": "held-host-local",
            "subnet": str(free_cidr()),
            "dataDir": str(data_dir),
        },
    }


async def test_killed_while_plugin_runs_releases_allocation(
    session_dir: Path,
    ipamd: Ipamd,
    bridge_name: str,
    make_netns: Callable[[], str],
    tmp_path: Path,
) -> None:
    directory = session_dir / unique_name("recovery-")
    directory.mkdir()
    data_dir = tmp_path / "host-local"
    hold = tmp_path / "hold"
    hold.touch()
    plugins = wrapped_host_local(tmp_path / "plugins", hold, tmp_path / "fail")
    cni_path = f"{plugins}:{CNI_PATH}"
    netns = f"/run/netns/{make_netns()}"
    config = held_plugin_config(directory, bridge_name, data_dir)

    # host-local has allocated once an address file exists, and the wrapper delays its result.
    allocated = (lambda: len(allocations(data_dir)) == 1, "host-local's allocation")
    killed = await kill_mid_add(
        directory, ipamd, None, netns, config, "pod-held", paused=allocated, cni_path=cni_path
    )
    hold.unlink()

    _, process = await asyncio.to_thread(
        start_node_daemon, directory, ipamd.url, cluster=CLUSTER, node_name=NODE
    )
    try:
        # The restarted daemon ran the plugin's DEL before serving.
        left = allocations(data_dir)
        journaled = list((directory / "state" / JOURNAL_DIRECTORY).glob("*.json"))
        retried = await run_shim("ADD", "pod-held", netns, config, cni_path)
        deleted = await run_shim("DEL", "pod-held", netns, config, cni_path)
    finally:
        stop(process)

    assert killed.exit_code != 0
    assert left == []
    assert journaled == []
    assert retried.exit_code == 0, retried
    assert deleted.exit_code == 0, deleted
    assert allocations(data_dir) == []


async def test_failed_plugin_add_runs_plugin_del(
    session_dir: Path,
    ipamd: Ipamd,
    bridge_name: str,
    make_netns: Callable[[], str],
    tmp_path: Path,
) -> None:
    directory = session_dir / unique_name("recovery-")
    directory.mkdir()
    data_dir = tmp_path / "host-local"
    fail = tmp_path / "fail"
    fail.touch()
    plugins = wrapped_host_local(tmp_path / "plugins", tmp_path / "hold", fail)
    netns = f"/run/netns/{make_netns()}"
    config = held_plugin_config(directory, bridge_name, data_dir)

    _, process = start_node_daemon(directory, ipamd.url, cluster=CLUSTER, node_name=NODE)
    try:
        failed = await run_shim("ADD", "pod-fail", netns, config, f"{plugins}:{CNI_PATH}")
        journaled = list((directory / "state" / JOURNAL_DIRECTORY).glob("*.json"))
    finally:
        stop(process)

    assert failed.exit_code != 0
    assert "made to fail" in failed.stdout
    # No runtime DEL yet: the node daemon ran the plugin's DEL itself.
    assert allocations(data_dir) == []
    assert journaled == []
