"""The macvlan driver on this host's kernel, with a veth end as the master."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, ip_address, ip_interface

import pytest

from leasewire.drivers.base import (
    AttachRequest,
    CheckFailedError,
    CheckRequest,
    DetachRequest,
    InvalidOptionError,
)
from leasewire.drivers.macvlan import MacvlanDriver

from .conftest import ROOT_ONLY, FrameCapture, Namespaces, in_netns, ping, run

pytestmark = ROOT_ONLY

GATEWAY = "10.214.3.1"


def request(netns: str, index: int, options: dict[str, object], mtu: int = 1500) -> AttachRequest:
    return AttachRequest(
        container_id=f"macvlan-pod-{index}",
        netns=netns,
        ifname="net1",
        address=ip_interface(f"10.214.3.{10 + index}/24"),
        gateway=ip_address(GATEWAY),
        mtu=mtu,
        options=options,
    )


def is_gratuitous_arp(frame: bytes, address: str) -> bool:
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return False
    sender = IPv4Address(frame[28:32])
    target = IPv4Address(frame[38:42])
    operation = struct.unpack("!H", frame[20:22])[0]
    return operation == 1 and str(sender) == address and str(target) == address


async def test_macvlan_bridge_mode_pods_talk(spaces: Namespaces) -> None:
    master, peer = spaces.veth_pair()
    options: dict[str, object] = {"master": master, "mode": "bridge"}
    driver = MacvlanDriver()
    pods = [spaces.netns(), spaces.netns()]
    capture = FrameCapture(peer)
    try:
        attachments = [
            await driver.attach(request(netns, i, options)) for i, netns in enumerate(pods)
        ]
        # The pod announces its address: a gratuitous ARP arrives at the far end of the master.
        assert capture.wait_for(lambda frame: is_gratuitous_arp(frame, "10.214.3.10"))
    finally:
        capture.close()

    assert ping(pods[0], "10.214.3.11")
    assert ping(pods[1], "10.214.3.10")
    details = in_netns(pods[0], "ip", "-d", "link", "show", "net1").stdout
    assert "macvlan mode bridge" in details
    (interface,) = attachments[0].interfaces
    assert interface.name == "net1"
    assert interface.sandbox == pods[0]
    assert interface.mac in details

    checked = request(pods[0], 0, options)
    await driver.check(
        CheckRequest(
            container_id=checked.container_id,
            netns=checked.netns,
            ifname="net1",
            address=checked.address,
            gateway=checked.gateway,
            options=options,
        )
    )
    # A master that is down degrades the attachment.
    run("ip", "link", "set", master, "down")
    with pytest.raises(CheckFailedError, match="is down"):
        await driver.check(
            CheckRequest(
                container_id=checked.container_id,
                netns=checked.netns,
                ifname="net1",
                address=checked.address,
                gateway=checked.gateway,
                options=options,
            )
        )

    detach = DetachRequest(
        container_id="macvlan-pod-0", netns=pods[0], ifname="net1", options=options
    )
    await driver.detach(detach)
    await driver.detach(detach)
    assert in_netns(pods[0], "ip", "link", "show", "net1").returncode != 0
    # The netns is gone: nothing is left to remove, and DEL still succeeds.
    await driver.detach(
        DetachRequest(
            container_id="macvlan-pod-1",
            netns="/run/netns/lwt-never-created",
            ifname="net1",
            options=options,
        )
    )


async def test_macvlan_private_mode_isolates_pods(spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    options: dict[str, object] = {"master": master, "mode": "private"}
    driver = MacvlanDriver()
    pods = [spaces.netns(), spaces.netns()]
    for i, netns in enumerate(pods):
        await driver.attach(request(netns, i, options))

    assert "macvlan mode private" in in_netns(pods[0], "ip", "-d", "link", "show", "net1").stdout
    assert not ping(pods[0], "10.214.3.11")


@pytest.mark.parametrize("mode", ["vepa", "passthru"])
async def test_macvlan_mode_applied(spaces: Namespaces, mode: str) -> None:
    master, _peer = spaces.veth_pair()
    options: dict[str, object] = {"master": master, "mode": mode}
    netns = spaces.netns()
    await MacvlanDriver().attach(request(netns, 0, options))
    assert f"macvlan mode {mode}" in in_netns(netns, "ip", "-d", "link", "show", "net1").stdout


async def test_macvlan_requested_mac(spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    netns = spaces.netns()
    attach = request(netns, 0, {"master": master})
    attach = AttachRequest(**{**attach.__dict__, "mac": "c2:11:22:33:44:55"})
    attachment = await MacvlanDriver().attach(attach)
    assert attachment.interfaces[0].mac == "c2:11:22:33:44:55"
    assert "c2:11:22:33:44:55" in in_netns(netns, "ip", "link", "show", "net1").stdout


async def test_macvlan_mtu_above_master(spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    run("ip", "link", "set", master, "mtu", "1400")
    netns = spaces.netns()
    with pytest.raises(InvalidOptionError) as caught:
        await MacvlanDriver().attach(request(netns, 0, {"master": master}, mtu=1500))
    assert "1500" in str(caught.value)
    assert "1400" in str(caught.value)
    assert master in str(caught.value)
    # Nothing is left behind, in the pod or on the host.
    assert "net1" not in in_netns(netns, "ip", "link").stdout
    assert f"@{master}" not in run("ip", "link", "show", "type", "macvlan")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "master"),
        ({"master": 5}, "master"),
        ({"master": "a/b"}, "master"),
        ({"master": "eth0", "mode": "l2"}, "mode"),
    ],
)
def test_macvlan_rejects_option(options: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        MacvlanDriver().validate(options)
    assert caught.value.key == key
