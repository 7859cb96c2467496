"""STATUS 51 through the real shim, node daemon and ipamd: a network whose live
pods lost their bridge, or whose macvlan master is down or gone, is degraded."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .conftest import Network, ip, unique_name


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return f"/run/netns/{make_netns()}"


@pytest.fixture
def master() -> Iterator[str]:
    """One end of a veth pair, up, for macvlan pods to hang off (this kernel has no dummy)."""
    name = unique_name()
    ip("link", "add", name, "type", "veth", "peer", "name", unique_name())
    ip("link", "set", name, "up")
    yield name
    ip("link", "del", name, check=False)


def test_status_bridge_deleted(network: Network, netns: str, bridge: str) -> None:
    network.version = "1.1.0"
    # No pod yet: the bridge does not exist, and that is no degradation.
    fresh = network.run("STATUS", "", "")
    added = network.run("ADD", "pod-deg-br", netns)
    healthy = network.run("STATUS", "", "")
    ip("link", "del", bridge)

    degraded = network.run("STATUS", "", "")
    network.run("DEL", "pod-deg-br", netns)
    after_del = network.run("STATUS", "", "")

    assert (fresh.exit_code, fresh.stdout) == (0, ""), fresh
    assert added.exit_code == 0, added
    assert (healthy.exit_code, healthy.stdout) == (0, ""), healthy
    assert degraded.exit_code != 0
    assert degraded.json["code"] == 51
    assert f"bridge {bridge!r} does not exist" in degraded.json["msg"]
    # Without pods left, a missing bridge degrades nothing.
    assert (after_del.exit_code, after_del.stdout) == (0, ""), after_del


def test_status_master_down_then_missing(network: Network, netns: str, master: str) -> None:
    network.version = "1.1.0"
    config = network.config(driver="macvlan", master=master, mode="bridge")
    added = network.run("ADD", "pod-deg-mv", netns, config=config)
    healthy = network.run("STATUS", "", "", config=config)

    ip("link", "set", master, "down")
    down = network.run("STATUS", "", "", config=config)
    ip("link", "del", master)
    missing = network.run("STATUS", "", "", config=config)
    deleted = network.run("DEL", "pod-deg-mv", netns, config=config)

    assert added.exit_code == 0, added
    assert (healthy.exit_code, healthy.stdout) == (0, ""), healthy
    assert down.json["code"] == 51, down
    assert f"macvlan master {master!r} is down" in down.json["msg"]
    assert missing.json["code"] == 51, missing
    assert f"macvlan master {master!r} does not exist" in missing.json["msg"]
    assert deleted.exit_code == 0, deleted
