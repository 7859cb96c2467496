"""Address parsing and the 16-byte storage key.

The database stores every address as 16 big-endian bytes. An IPv6 address is
its own 16 bytes, and an IPv4 address is stored in its IPv4-mapped IPv6 form
(``::ffff:a.b.c.d``). Byte order then equals address order within each family,
so "the next held address at or after X" is a range query on an index.
Every pool is of one family, so the two families never meet in one query.
"""

from __future__ import annotations

import ipaddress
from typing import Literal, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPVersion: TypeAlias = Literal[4, 6]

KEY_LENGTH = 16
# Prefix of an IPv4-mapped IPv6 address (RFC 4291, section 2.5.5.2).
_IPV4_MAPPED = 0xFFFF << 32


def address_key(version: IPVersion, value: int) -> bytes:
    """Encode the address ``value`` of family ``version`` as its 16-byte storage key."""
    if version == 4:
        return (_IPV4_MAPPED | value).to_bytes(KEY_LENGTH, "big")
    return value.to_bytes(KEY_LENGTH, "big")


def key_value(version: IPVersion, key: bytes) -> int:
    """Decode a 16-byte storage key back to the integer value of the address."""
    if len(key) != KEY_LENGTH:
        raise ValueError(f"address key must be {KEY_LENGTH} bytes, got {len(key)}")
    value = int.from_bytes(key, "big")
    if version == 4:
        if value >> 32 != 0xFFFF:
            raise ValueError(f"address key {key.hex()} is not an IPv4-mapped address")
        return value & 0xFFFFFFFF
    return value


def make_address(version: IPVersion, value: int) -> IPAddress:
    if version == 4:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


def parse_address(text: str) -> IPAddress:
    """Parse one address without a prefix length. Raises ValueError on anything else."""
    return ipaddress.ip_address(text.strip())


def parse_network(text: str, *, strict: bool = True) -> IPNetwork:
    """Parse a CIDR. With ``strict``, host bits set (``10.0.0.1/24``) raise ValueError."""
    return ipaddress.ip_network(text.strip(), strict=strict)


def version_of(address: IPAddress | IPNetwork) -> IPVersion:
    return 4 if address.version == 4 else 6
