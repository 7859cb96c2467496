"""Attach profiles through the real shim and node daemon.

The profile of a node picks the driver of new pods, DEL uses the driver that a
pod was attached with, and a driver named in the conflist wins over the profile.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import ROOT_ONLY, Namespaces, in_netns, ping, unique_name
from .stack import CLUSTER, Stack, macvlan_profile_network, put, running_stack

pytestmark = ROOT_ONLY

NODE = "profile-node"


@pytest.fixture
def stack() -> Iterator[Stack]:
    with running_stack("lwt-profile-", NODE) as started:
        yield started


def kind_of(netns: str, ifname: str) -> str:
    """Return the link kind ("macvlan", "veth", ...) that ``ip -d link`` shows, or ''."""
    lines = in_netns(netns, "ip", "-d", "link", "show", ifname).stdout.splitlines()
    return lines[2].split()[0] if len(lines) > 2 else ""


def lease_driver(stack: Stack, container: str) -> str | None:
    status, payload = stack.ipamd.request(
        "GET", f"/v1/leases?cluster={CLUSTER}&containerID={container}&ifname=eth0"
    )
    assert status == 200, payload
    leases = payload["leases"] if isinstance(payload, dict) else payload
    assert len(leases) == 1, leases
    driver: str | None = leases[0]["driver"]
    return driver


def test_profile_picks_driver_for_new_pods(stack: Stack, spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    bridge = spaces.host_link(unique_name("lwtb"))
    config = macvlan_profile_network(
        stack, master, network="profilenet", cidr="10.217.4.0/24", gateway="10.217.4.1"
    )

    # The node's profile names macvlan, the conflist names no driver.
    first = spaces.netns()
    code, stdout = stack.shim("ADD", config, "profile-a", first, "eth0")
    assert code == 0, stdout + stack.log()
    assert kind_of(first, "eth0") == "macvlan"
    assert lease_driver(stack, "profile-a") == "macvlan"

    # The profile switches to bridge: new pods get a veth, the old pod keeps macvlan.
    put(
        stack,
        "/v1/attach-profiles/open-l2",
        {"nodeSelector": {"wire": "open-l2"}, "driver": "bridge", "options": {"bridge": bridge}},
    )
    second = spaces.netns()
    code, stdout = stack.shim("ADD", config, "profile-b", second, "eth0")
    assert code == 0, stdout + stack.log()
    assert kind_of(second, "eth0") == "veth"
    assert ping(second, "10.217.4.1")

    # DEL of the first pod uses the driver it was attached with: the macvlan goes.
    code, stdout = stack.shim("DEL", config, "profile-a", first, "eth0")
    assert code == 0, stdout
    assert in_netns(first, "ip", "link", "show", "eth0").returncode != 0

    # A driver in the conflist wins over the profile.
    third = spaces.netns()
    named = {**config, "driver": "macvlan", "master": master}
    code, stdout = stack.shim("ADD", named, "profile-c", third, "eth0")
    assert code == 0, stdout + stack.log()
    assert kind_of(third, "eth0") == "macvlan"
    assert lease_driver(stack, "profile-c") == "macvlan"

    for container, netns, used in (("profile-b", second, config), ("profile-c", third, named)):
        code, stdout = stack.shim("DEL", used, container, netns, "eth0")
        assert code == 0, stdout
        assert in_netns(netns, "ip", "link", "show", "eth0").returncode != 0
