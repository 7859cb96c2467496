"""Allocation rules as pure functions over address intervals."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leasewire.ipamd.addresses import make_address, version_of
from leasewire.ipamd.allocator import (
    Interval,
    PoolLayout,
    build_layout,
    merge_intervals,
    next_fit_segments,
    reserved_addresses,
    skip_taken,
    subtract_intervals,
    total_size,
)
from leasewire.ipamd.errors import InvalidPool


def layout(
    cidr: str,
    *,
    gateway: str | None = None,
    ranges: list[tuple[str, str]] | None = None,
    exclude: list[str] | None = None,
) -> PoolLayout:
    return build_layout(cidr=cidr, gateway=gateway, ranges=ranges or [], exclude=exclude or [])


def usable(pool: PoolLayout) -> list[str]:
    """List every usable address; only for small pools."""
    return [
        str(make_address(pool.version, value))
        for interval in pool.intervals
        for value in range(interval.first, interval.last + 1)
    ]


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


# Interval arithmetic.


def test_merge_joins_overlapping_and_adjacent() -> None:
    merged = merge_intervals([Interval(10, 12), Interval(1, 3), Interval(4, 5), Interval(11, 20)])
    assert merged == [Interval(1, 5), Interval(10, 20)]


def test_subtract_splits_and_trims() -> None:
    result = subtract_intervals([Interval(0, 9)], [Interval(0, 0), Interval(4, 5), Interval(9, 12)])
    assert result == [Interval(1, 3), Interval(6, 8)]


def test_subtract_hole_spanning_intervals() -> None:
    result = subtract_intervals([Interval(0, 3), Interval(6, 9)], [Interval(2, 7)])
    assert result == [Interval(0, 1), Interval(8, 9)]


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=6),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=6),
)
def test_subtract_matches_set_difference(
    base: list[tuple[int, int]], removed: list[tuple[int, int]]
) -> None:
    base_intervals = [Interval(first, first + length) for first, length in base]
    removed_intervals = [Interval(first, first + length) for first, length in removed]
    expected = {v for i in base_intervals for v in range(i.first, i.last + 1)} - {
        v for i in removed_intervals for v in range(i.first, i.last + 1)
    }
    result = subtract_intervals(base_intervals, removed_intervals)
    assert {v for i in result for v in range(i.first, i.last + 1)} == expected
    assert total_size(result) == len(expected)
    assert result == merge_intervals(result)


# Reserved addresses per family and prefix length.


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.0.0.0/24", {"10.0.0.0", "10.0.0.255"}),
        ("10.0.0.0/30", {"10.0.0.0", "10.0.0.3"}),
        ("10.0.0.0/31", set()),
        ("10.0.0.7/32", set()),
        ("fd00::/64", {"fd00::"}),
        ("fd00::/126", {"fd00::"}),
        ("fd00::/127", set()),
        ("fd00::1/128", set()),
    ],
)
def test_reserved_addresses(cidr: str, expected: set[str]) -> None:
    network = ipaddress.ip_network(cidr)
    reserved = {
        str(make_address(version_of(network), value)) for value in reserved_addresses(network)
    }
    assert reserved == expected


# Usable addresses of whole pools.


def test_ipv4_24_without_gateway() -> None:
    pool = layout("10.0.0.0/24")
    assert pool.size == 254
    assert pool.intervals == (Interval(v4("10.0.0.1"), v4("10.0.0.254")),)


def test_ipv4_29_with_gateway_and_exclude() -> None:
    pool = layout("10.0.0.0/29", gateway="10.0.0.1", exclude=["10.0.0.6"])
    assert usable(pool) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]


def test_ipv4_30_has_two_usable() -> None:
    assert usable(layout("10.0.0.4/30")) == ["10.0.0.5", "10.0.0.6"]


def test_ipv4_31_has_two_usable() -> None:
    assert usable(layout("10.0.0.4/31")) == ["10.0.0.4", "10.0.0.5"]


def test_ipv4_32_has_one_usable() -> None:
    assert usable(layout("10.0.0.9/32")) == ["10.0.0.9"]


def test_ranges_limit_usable_and_keep_gateway_out() -> None:
    pool = layout(
        "10.0.0.0/24",
        gateway="10.0.0.11",
        ranges=[("10.0.0.20", "10.0.0.22"), ("10.0.0.10", "10.0.0.12")],
    )
    assert usable(pool) == ["10.0.0.10", "10.0.0.12", "10.0.0.20", "10.0.0.21", "10.0.0.22"]
    assert [str(start) for start, _ in pool.ranges] == ["10.0.0.10", "10.0.0.20"]


def test_range_covering_network_address_still_skips_it() -> None:
    pool = layout("10.0.0.0/29", ranges=[("10.0.0.0", "10.0.0.7")])
    assert usable(pool) == [f"10.0.0.{i}" for i in range(1, 7)]


def test_exclude_forms_cidr_range_address() -> None:
    pool = layout("10.0.0.0/27", exclude=["10.0.0.0/29", "10.0.0.10-10.0.0.20", "10.0.0.30"])
    assert usable(pool) == ["10.0.0.8", "10.0.0.9", *[f"10.0.0.{i}" for i in range(21, 30)]]
    assert [spec.text for spec in pool.excludes] == [
        "10.0.0.0/29",
        "10.0.0.10-10.0.0.20",
        "10.0.0.30",
    ]


def test_ipv6_skips_anycast_address() -> None:
    pool = layout("fd00::/125", gateway="fd00::1")
    assert usable(pool) == [f"fd00::{i}" for i in range(2, 8)]


def test_ipv6_128_has_one_usable() -> None:
    assert usable(layout("fd00::5/128")) == ["fd00::5"]


def test_ipv4_8_size_is_arithmetic() -> None:
    pool = layout("10.0.0.0/8", gateway="10.0.0.1", exclude=["10.255.0.0/16"])
    # The excluded /16 contains the broadcast address, so that one is not subtracted twice.
    assert pool.size == 2**24 - 2 - 1 - 2**16 + 1
    assert pool.intervals == (Interval(v4("10.0.0.2"), v4("10.254.255.255")),)


def test_ipv6_64_size_is_arithmetic() -> None:
    pool = layout("fd00:1:2:3::/64", gateway="fd00:1:2:3::1")
    assert pool.size == 2**64 - 2


# Validation errors name the field and the value.


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ({"cidr": "10.0.0.1/24"}, "cidr", "10.0.0.1/24"),
        ({"cidr": "10.0.0.0/33"}, "cidr", "10.0.0.0/33"),
        ({"cidr": "banana"}, "cidr", "banana"),
        ({"cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway", "10.0.1.1"),
        ({"cidr": "10.0.0.0/24", "gateway": "fd00::1"}, "gateway", "fd00::1"),
        ({"cidr": "10.0.0.0/24", "gateway": "nope"}, "gateway", "nope"),
        (
            {"cidr": "10.0.0.0/24", "ranges": [("10.0.0.10", "10.0.1.10")]},
            "ranges[0].end",
            "10.0.1.10",
        ),
        (
            {"cidr": "10.0.0.0/24", "ranges": [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")]},
            "ranges[1].start",
            "fd00::1",
        ),
        (
            {"cidr": "10.0.0.0/24", "ranges": [("10.0.0.20", "10.0.0.10")]},
            "ranges[0]",
            "10.0.0.20-10.0.0.10",
        ),
        ({"cidr": "10.0.0.0/24", "exclude": ["10.0.1.0/28"]}, "exclude[0]", "10.0.1.0/28"),
        ({"cidr": "10.0.0.0/24", "exclude": ["10.0.0.1/28"]}, "exclude[0]", "10.0.0.1/28"),
        ({"cidr": "10.0.0.0/24", "exclude": ["fd00::/64"]}, "exclude[0]", "fd00::/64"),
        (
            {"cidr": "10.0.0.0/24", "exclude": ["10.0.0.9-10.0.0.3"]},
            "exclude[0]",
            "10.0.0.9-10.0.0.3",
        ),
        ({"cidr": "10.0.0.5/32", "gateway": "10.0.0.5"}, "cidr", "10.0.0.5/32"),
        (
            {"cidr": "10.0.0.0/30", "gateway": "10.0.0.1", "exclude": ["10.0.0.2"]},
            "cidr",
            "10.0.0.0/30",
        ),
    ],
)
def test_invalid_pool_names_field_and_value(
    spec: dict[str, object], field: str, value: str
) -> None:
    with pytest.raises(InvalidPool) as caught:
        build_layout(
            cidr=str(spec["cidr"]),
            gateway=spec.get("gateway"),  # type: ignore[arg-type]
            ranges=spec.get("ranges", []),  # type: ignore[arg-type]
            exclude=spec.get("exclude", []),  # type: ignore[arg-type]
        )
    assert caught.value.field == field
    assert caught.value.value == value
    assert field in caught.value.message
    assert value in caught.value.message


@pytest.mark.parametrize(
    ("cidr", "hint"),
    [
        ("10.40.0.5/24", "give the network address, e.g. 10.40.0.0/24"),
        ("fd00::5/64", "give the network address, e.g. fd00::/64"),
        ("10.40.0.0/33", "not a valid CIDR such as 10.0.0.0/24"),
        ("banana", "not a valid CIDR such as 10.0.0.0/24"),
    ],
)
def test_invalid_cidr_says_what_to_give(cidr: str, hint: str) -> None:
    with pytest.raises(InvalidPool) as caught:
        build_layout(cidr=cidr, gateway=None, ranges=[], exclude=[])
    assert hint in caught.value.message


# Why a requested address cannot be leased.


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "gateway"),
        ("10.0.0.0", "network address"),
        ("10.0.0.255", "broadcast address"),
        ("10.0.0.7", "excluded by 10.0.0.4/30"),
        ("10.0.0.250", "outside the pool ranges"),
        ("10.0.1.1", "outside the pool CIDR"),
        ("fd00::1", "IPv6"),
    ],
)
def test_why_not_allocatable(address: str, reason: str) -> None:
    pool = layout(
        "10.0.0.0/24",
        gateway="10.0.0.1",
        ranges=[("10.0.0.0", "10.0.0.200")],
        exclude=["10.0.0.4/30"],
    )
    explanation = pool.why_not_allocatable(ipaddress.ip_address(address))
    assert explanation is not None
    assert reason in explanation


def test_why_not_allocatable_accepts_usable() -> None:
    pool = layout("10.0.0.0/24", gateway="10.0.0.1")
    assert pool.why_not_allocatable(ipaddress.ip_address("10.0.0.2")) is None


def test_ipv6_anycast_not_allocatable() -> None:
    pool = layout("fd00::/64")
    explanation = pool.why_not_allocatable(ipaddress.ip_address("fd00::"))
    assert explanation is not None
    assert "anycast" in explanation


# Next-fit search order.


def test_next_fit_without_cursor_is_pool_order() -> None:
    intervals = [Interval(1, 3), Interval(10, 12)]
    assert next_fit_segments(intervals, None) == intervals


def test_next_fit_wraps_around_cursor() -> None:
    intervals = [Interval(1, 3), Interval(10, 12), Interval(20, 22)]
    assert next_fit_segments(intervals, 11) == [
        Interval(11, 12),
        Interval(20, 22),
        Interval(1, 3),
        Interval(10, 10),
    ]


def test_next_fit_cursor_in_gap() -> None:
    intervals = [Interval(1, 3), Interval(10, 12)]
    assert next_fit_segments(intervals, 5) == [Interval(10, 12), Interval(1, 3)]


def test_next_fit_cursor_past_end_starts_at_first() -> None:
    intervals = [Interval(1, 3), Interval(10, 12)]
    assert next_fit_segments(intervals, 13) == intervals


@given(st.integers(0, 30))
def test_next_fit_visits_every_address_once(cursor: int) -> None:
    intervals = [Interval(1, 3), Interval(10, 12), Interval(20, 22)]
    visited = [v for i in next_fit_segments(intervals, cursor) for v in range(i.first, i.last + 1)]
    assert sorted(visited) == [v for i in intervals for v in range(i.first, i.last + 1)]
    assert len(visited) == len(set(visited))


def test_skip_taken_finds_gap() -> None:
    assert skip_taken(5, [5, 6, 8]) == (7, True)


def test_skip_taken_free_candidate() -> None:
    assert skip_taken(5, [7]) == (5, True)


def test_skip_taken_batch_without_gap() -> None:
    assert skip_taken(5, [5, 6, 7]) == (8, False)
    assert skip_taken(5, []) == (5, False)
