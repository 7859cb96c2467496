"""Address parsing and the 16-byte storage key."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leasewire.ipamd.addresses import (
    KEY_LENGTH,
    address_key,
    key_value,
    make_address,
    parse_address,
    parse_network,
)

IPV4_VALUES = st.integers(min_value=0, max_value=2**32 - 1)
IPV6_VALUES = st.integers(min_value=0, max_value=2**128 - 1)


def test_ipv4_key_is_mapped_ipv6() -> None:
    key = address_key(4, int(ipaddress.IPv4Address("10.1.2.3")))
    assert len(key) == KEY_LENGTH
    assert ipaddress.IPv6Address(key) == ipaddress.IPv6Address("::ffff:10.1.2.3")


def test_ipv6_key_is_the_address_bytes() -> None:
    address = ipaddress.IPv6Address("fd00::1:2")
    assert address_key(6, int(address)) == address.packed


@given(IPV4_VALUES, IPV4_VALUES)
def test_ipv4_key_order_is_address_order(first: int, second: int) -> None:
    assert (address_key(4, first) < address_key(4, second)) == (first < second)


@given(IPV6_VALUES, IPV6_VALUES)
def test_ipv6_key_order_is_address_order(first: int, second: int) -> None:
    assert (address_key(6, first) < address_key(6, second)) == (first < second)


@given(IPV4_VALUES)
def test_ipv4_key_round_trip(value: int) -> None:
    assert key_value(4, address_key(4, value)) == value


@given(IPV6_VALUES)
def test_ipv6_key_round_trip(value: int) -> None:
    assert key_value(6, address_key(6, value)) == value


def test_key_value_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        key_value(6, b"\x00" * 4)


def test_key_value_rejects_ipv6_key_as_ipv4() -> None:
    key = ipaddress.IPv6Address("fd00::1").packed
    with pytest.raises(ValueError, match="not an IPv4-mapped"):
        key_value(4, key)


def test_make_address_per_family() -> None:
    assert make_address(4, 1) == ipaddress.IPv4Address("0.0.0.1")
    assert make_address(6, 1) == ipaddress.IPv6Address("::1")


def test_parse_address_rejects_prefix() -> None:
    with pytest.raises(ValueError, match=re.escape("10.0.0.1/24")):
        parse_address("10.0.0.1/24")


def test_parse_network_strict_rejects_host_bits() -> None:
    with pytest.raises(ValueError, match="host bits set"):
        parse_network("10.0.0.1/24")
    assert str(parse_network("10.0.0.1/24", strict=False)) == "10.0.0.0/24"
