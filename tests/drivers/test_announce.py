"""Frames of the gratuitous ARP and the unsolicited neighbour advertisement."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from leasewire.drivers.announce import _checksum, gratuitous_arp, unsolicited_advertisement

MAC = "02:11:22:33:44:55"


def test_gratuitous_arp_frame() -> None:
    frame = gratuitous_arp(MAC, IPv4Address("10.1.2.3"))
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6
    assert frame[6:12] == bytes.fromhex("021122334455")
    assert frame[12:14] == b"\x08\x06"
    assert struct.unpack("!H", frame[20:22])[0] == 1
    assert frame[28:32] == IPv4Address("10.1.2.3").packed
    assert frame[38:42] == IPv4Address("10.1.2.3").packed


def test_neighbour_advertisement_frame() -> None:
    address = IPv6Address("fd00::42")
    frame = unsolicited_advertisement(MAC, address)
    ipv6, icmp = frame[14:54], frame[54:]
    assert frame[:6] == bytes.fromhex("333300000001")
    assert frame[12:14] == b"\x86\xdd"
    assert ipv6[7] == 255
    assert ipv6[8:24] == address.packed
    assert icmp[0] == 136
    assert struct.unpack("!I", icmp[4:8])[0] == 0x20000000
    assert icmp[8:24] == address.packed
    assert icmp[24:32] == b"\x02\x01" + bytes.fromhex("021122334455")
    # A correct checksum makes the sum over pseudo-header and message zero.
    pseudo = ipv6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert _checksum(pseudo + icmp) == 0


def test_invalid_mac() -> None:
    with pytest.raises(ValueError, match="invalid MAC address"):
        gratuitous_arp("02:11", IPv4Address("10.1.2.3"))
