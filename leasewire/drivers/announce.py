"""Announce a pod's addresses to its L2 neighbours after attach.

A gratuitous ARP request (IPv4) or an unsolicited neighbour advertisement with
the override flag (IPv6, RFC 4861 section 7.2.6) makes switches learn the
pod's MAC on its port and makes neighbours replace a stale entry left by an
earlier holder of the address. The frames are built here and sent from a raw
packet socket opened inside the pod's network namespace, so no tool such as
arping or ndisc6 is needed.

A packet socket can only be opened in the namespace of the calling thread, so
the sender runs in a short-lived thread of its own that enters the pod's
namespace with setns(2) and ends after sending. The event loop and the
executor threads never change namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import socket
import struct
import threading
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from leasewire.drivers.base import IPAddress

logger = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
# Ethernet multicast address of ff02::1, the IPv6 all-nodes group.
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ALL_NODES = IPv6Address("ff02::1")
ICMPV6_NEIGHBOR_ADVERTISEMENT = 136
NA_FLAG_OVERRIDE = 0x20000000
OPTION_TARGET_LINK_ADDRESS = 2
# Minimum Ethernet frame length without the frame check sequence.
MIN_FRAME_LENGTH = 60


def mac_bytes(mac: str) -> bytes:
    octets = bytes.fromhex(mac.replace(":", ""))
    if len(octets) != 6:
        raise ValueError(f"invalid MAC address {mac!r}: expected six colon-separated octets")
    return octets


def gratuitous_arp(mac: str, address: IPv4Address) -> bytes:
    """Build a gratuitous ARP request frame: sender and target address are both ``address``."""
    source = mac_bytes(mac)
    ethernet = BROADCAST_MAC + source + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # hardware type: Ethernet
        0x0800,  # protocol type: IPv4
        6,
        4,
        1,  # operation: request
        source,
        address.packed,
        b"\x00" * 6,
        address.packed,
    )
    return (ethernet + arp).ljust(MIN_FRAME_LENGTH, b"\x00")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_advertisement(mac: str, address: IPv6Address) -> bytes:
    """Build an unsolicited neighbour advertisement for ``address`` to all nodes."""
    source = mac_bytes(mac)
    option = struct.pack("!BB6s", OPTION_TARGET_LINK_ADDRESS, 1, source)
    body = struct.pack("!I16s", NA_FLAG_OVERRIDE, address.packed) + option
    length = 4 + len(body)
    pseudo_header = (
        address.packed + ALL_NODES.packed + struct.pack("!I3xB", length, socket.IPPROTO_ICMPV6)
    )
    header = struct.pack("!BBH", ICMPV6_NEIGHBOR_ADVERTISEMENT, 0, 0)
    checksum = _checksum(pseudo_header + header + body)
    icmp = struct.pack("!BBH", ICMPV6_NEIGHBOR_ADVERTISEMENT, 0, checksum) + body
    # Version 6, no traffic class or flow label, hop limit 255 as RFC 4861 requires.
    ipv6 = (
        struct.pack("!IHBB", 6 << 28, length, socket.IPPROTO_ICMPV6, 255)
        + address.packed
        + ALL_NODES.packed
    )
    return ALL_NODES_MAC + source + struct.pack("!H", ETH_P_IPV6) + ipv6 + icmp


def announcement_frames(mac: str, addresses: Sequence[IPAddress]) -> list[bytes]:
    return [
        gratuitous_arp(mac, address)
        if isinstance(address, IPv4Address)
        else unsolicited_advertisement(mac, address)
        for address in addresses
    ]


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns into {path!r} failed: {os.strerror(code)}")
    finally:
        os.close(fd)


def send_frames_in_netns(netns: str, ifname: str, frames: Sequence[bytes]) -> None:
    """Send raw Ethernet ``frames`` on ``ifname`` inside ``netns``; blocks until sent."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def send() -> None:
        try:
            _enter_netns(netns)
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((ifname, 0))
                for frame in frames:
                    sock.send(frame)
        except BaseException as error:
            done.set_exception(error)
        else:
            done.set_result(None)

    # A new thread per call: the namespace change stays with that thread, which ends here.
    thread = threading.Thread(target=send, name=f"announce-{ifname}", daemon=True)
    thread.start()
    thread.join()
    done.result()


async def announce_addresses(
    netns: str, ifname: str, mac: str, addresses: Sequence[IPAddress]
) -> None:
    """Send a gratuitous ARP or unsolicited NA per address from ``ifname`` in ``netns``.

    Announcing is best effort: a failure is logged and not raised, because the
    pod works without it once its neighbours resolve the address themselves.
    """
    if not addresses:
        return
    frames = announcement_frames(mac, addresses)
    try:
        await asyncio.to_thread(send_frames_in_netns, netns, ifname, frames)
    except OSError as error:
        logger.warning(
            "Failed to announce %s on %s in %s: %s",
            ", ".join(str(address) for address in addresses),
            ifname,
            netns,
            error,
        )
        return
    logger.debug("Announced %s on %s in %s", list(map(str, addresses)), ifname, netns)
