"""DEL without an attachment record while ipamd is down, through the real shim and daemons.

The node's attach profile names macvlan and the conflist names no driver, so
that the default (bridge) would leave the pod's macvlan behind. The node
daemon has to detach with the profile that ipamd returned at ADD.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from leasewire.cni.ipamclient import AttachView
from leasewire.cni.profilecache import PROFILES_FILE, ProfileCache
from leasewire.cni.releasequeue import QUEUE_FILE

from .conftest import ROOT_ONLY, Namespaces, in_netns
from .stack import Stack, macvlan_profile_network, running_stack

# See stack.py: pytest and mypy name the integration package differently.
if TYPE_CHECKING:
    from tests.integration.daemons import start_ipamd, stop
else:
    from integration.daemons import start_ipamd, stop

NODE = "fallback-node"
CONTAINER = "fallback-a"
# The node daemon replays queued releases every 5 s (NodeSettings.release_retry_interval),
# so this leaves a margin.
REPLAY_SECONDS = 15.0


@pytest.fixture
def stack() -> Iterator[Stack]:
    with running_stack("lwt-fallback-", NODE) as started:
        yield started


def restart_ipamd(stack: Stack) -> None:
    """Start ipamd again on its old port and database, in place of the stopped process."""
    port = int(stack.ipamd.url.rsplit(":", 1)[1])
    _, process = start_ipamd(stack.directory, port, env=stack.env)
    stack.processes[0] = process


def wait_until(check: Callable[[], bool], description: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {description}")
        time.sleep(0.1)


@ROOT_ONLY
def test_del_uses_remembered_profile(stack: Stack, spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    config = macvlan_profile_network(
        stack, master, network="fallbacknet", cidr="10.217.5.0/24", gateway="10.217.5.1"
    )
    netns = spaces.netns()
    code, stdout = stack.shim("ADD", config, CONTAINER, netns, "eth0")
    assert code == 0, stdout + stack.log()
    assert "macvlan" in in_netns(netns, "ip", "-d", "link", "show", "eth0").stdout

    # The state directory loses the record, and ipamd goes away.
    state = stack.directory / "state"
    records = list((state / "attachments").glob("*.json"))
    assert len(records) == 1, records
    records[0].unlink()
    stop(stack.processes[0])

    code, stdout = stack.shim("DEL", config, CONTAINER, netns, "eth0")
    assert (code, stdout) == (0, ""), stdout + stack.log()
    assert in_netns(netns, "ip", "link", "show", "eth0").returncode != 0, stack.log()
    assert "attach profile 'open-l2' that ipamd last returned" in stack.log()
    (line,) = (state / QUEUE_FILE).read_text().splitlines()
    assert json.loads(line)["owner"]["containerID"] == CONTAINER

    # Back up, ipamd takes the queued release.
    restart_ipamd(stack)

    def released() -> bool:
        leases = stack.ipamd.leases(str(config["pool"]), "released")
        return [lease["owner"]["containerID"] for lease in leases] == [CONTAINER]

    wait_until(released, "the queued release", REPLAY_SECONDS)
    assert stack.ipamd.leases(str(config["pool"])) == []
    wait_until(lambda: not (state / QUEUE_FILE).exists(), "the queue file to go", REPLAY_SECONDS)


MACVLAN = AttachView(profile="open-l2", driver="macvlan", options={"master": "lwtm0"})


def test_profile_cache_survives_restart(tmp_path: Path) -> None:
    ProfileCache(tmp_path).remember("net-a", MACVLAN)

    assert ProfileCache(tmp_path).recall("net-a") == MACVLAN
    assert ProfileCache(tmp_path).recall("net-b") is None


def test_profile_cache_forgets_on_none(tmp_path: Path) -> None:
    cache = ProfileCache(tmp_path)
    cache.remember("net-a", MACVLAN)
    cache.remember("net-a", None)

    assert cache.recall("net-a") is None
    assert ProfileCache(tmp_path).recall("net-a") is None


def test_profile_cache_writes_only_changes(tmp_path: Path) -> None:
    cache = ProfileCache(tmp_path)
    cache.remember("net-a", MACVLAN)
    path = tmp_path / PROFILES_FILE
    path.write_text('{"networks": {}}')

    # The same profile again leaves the file alone, a new one rewrites it.
    cache.remember("net-a", MACVLAN.model_copy())
    assert path.read_text() == '{"networks": {}}'
    bridge = AttachView(profile="veth", driver="bridge", options={"bridge": "lwtb0"})
    cache.remember("net-a", bridge)
    assert ProfileCache(tmp_path).recall("net-a") == bridge


@pytest.mark.parametrize(
    "text",
    ["{not json", "[]", '{"networks": []}', '{"networks": {"net-a": {"options": 3}}}', "\xff"],
)
def test_profile_cache_ignores_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    (tmp_path / PROFILES_FILE).write_text(text, encoding="latin-1")

    with caplog.at_level(logging.WARNING, logger="leasewire.cni.profilecache"):
        cache = ProfileCache(tmp_path)
    assert cache.recall("net-a") is None
    assert caplog.records, "expected a warning about the unreadable file"

    cache.remember("net-a", MACVLAN)
    assert ProfileCache(tmp_path).recall("net-a") == MACVLAN


def test_profile_cache_retries_failed_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "missing"
    cache = ProfileCache(state)

    with caplog.at_level(logging.WARNING, logger="leasewire.cni.profilecache"):
        cache.remember("net-a", MACVLAN)
    assert "Failed to write attach profile cache" in caplog.text
    assert cache.recall("net-a") == MACVLAN

    # Once the directory exists, the same profile is written although it is not new.
    state.mkdir()
    cache.remember("net-a", MACVLAN)
    assert ProfileCache(state).recall("net-a") == MACVLAN
