"""Pool layout and allocation rules as pure functions over address intervals.

A pool's usable addresses are a short sorted list of disjoint inclusive
intervals: its ranges (or the whole CIDR) minus the excluded addresses, the
gateway and the reserved addresses of the family. Everything here costs
O(number of ranges and excludes), never O(number of addresses), so a /8 or an
IPv6 /64 pool is as cheap as a /24. The database side (which addresses are
held) lives in ``leases.py``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leasewire.ipamd.addresses import (
    IPAddress,
    IPNetwork,
    IPVersion,
    parse_address,
    parse_network,
    version_of,
)
from leasewire.ipamd.errors import InvalidPool


@dataclass(frozen=True, order=True)
class Interval:
    """Inclusive interval of address values of one family."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort intervals and join those that overlap or touch."""
    merged: list[Interval] = []
    for interval in sorted(intervals):
        if merged and interval.first <= merged[-1].last + 1:
            if interval.last > merged[-1].last:
                merged[-1] = Interval(merged[-1].first, interval.last)
            continue
        merged.append(interval)
    return merged


def subtract_intervals(base: Iterable[Interval], removed: Iterable[Interval]) -> list[Interval]:
    """Remove every address of ``removed`` from ``base``. Both may be unsorted and overlapping."""
    result: list[Interval] = []
    holes = merge_intervals(removed)
    start = 0
    for interval in merge_intervals(base):
        # Both lists are sorted: holes that end before this interval end before every later one.
        while start < len(holes) and holes[start].last < interval.first:
            start += 1
        first = interval.first
        for hole in holes[start:]:
            if hole.first > interval.last:
                break
            if hole.first > first:
                result.append(Interval(first, hole.first - 1))
            first = max(first, hole.last + 1)
        if first <= interval.last:
            result.append(Interval(first, interval.last))
    return result


def total_size(intervals: Iterable[Interval]) -> int:
    return sum(interval.size for interval in intervals)


def reserved_addresses(network: IPNetwork) -> dict[int, str]:
    """Return the addresses of ``network`` that are never leased, each with the reason.

    IPv4 networks of /30 and larger lose their network and broadcast addresses,
    while /31 (RFC 3021) and /32 keep every address. IPv6 networks up to /126
    lose the all-zero host address, the subnet-router anycast address of RFC 4291
    (section 2.6.1), while /127 (RFC 6164) and /128 keep every address.
    """
    first = int(network.network_address)
    last = int(network.broadcast_address)
    if network.version == 4:
        if network.prefixlen <= 30:
            return {first: "the network address", last: "the broadcast address"}
        return {}
    if network.prefixlen <= 126:
        return {first: "the subnet-router anycast address"}
    return {}


@dataclass(frozen=True)
class ExcludeSpec:
    """One excluded address, CIDR or ``start-end`` range, in canonical text and as an interval."""

    text: str
    interval: Interval


@dataclass(frozen=True)
class PoolLayout:
    """Validated, canonical spec of a pool together with its usable intervals."""

    network: IPNetwork
    gateway: IPAddress | None
    ranges: tuple[tuple[IPAddress, IPAddress], ...]
    excludes: tuple[ExcludeSpec, ...]
    intervals: tuple[Interval, ...]

    @property
    def version(self) -> IPVersion:
        return version_of(self.network)

    @property
    def size(self) -> int:
        return total_size(self.intervals)

    def is_allocatable(self, value: int) -> bool:
        index = bisect.bisect_right([interval.first for interval in self.intervals], value) - 1
        return index >= 0 and value <= self.intervals[index].last

    def why_not_allocatable(self, address: IPAddress) -> str | None:
        """Return why ``address`` cannot be leased from this pool, or None if it can."""
        if address.version != self.network.version:
            return f"it is IPv{address.version} but pool CIDR {self.network} is IPv{self.version}"
        if address not in self.network:
            return f"it is outside the pool CIDR {self.network}"
        if address == self.gateway:
            return "it is the pool's gateway"
        value = int(address)
        reason = reserved_addresses(self.network).get(value)
        if reason is not None:
            return f"it is {reason} of {self.network}"
        for exclude in self.excludes:
            if exclude.interval.first <= value <= exclude.interval.last:
                return f"it is excluded by {exclude.text}"
        if not self.is_allocatable(value):
            ranges = ", ".join(f"{start}-{end}" for start, end in self.ranges)
            return f"it is outside the pool ranges {ranges}"
        return None


def _parse_member(field: str, text: str, network: IPNetwork) -> IPAddress:
    try:
        address = parse_address(text)
    except ValueError:
        raise InvalidPool(field, text, "not an IP address") from None
    if address.version != network.version:
        raise InvalidPool(
            field, text, f"IPv{address.version} address in an IPv{network.version} pool"
        )
    if address not in network:
        raise InvalidPool(field, text, f"outside the pool CIDR {network}")
    return address


def _parse_range(
    field: str, start_text: str, end_text: str, network: IPNetwork
) -> tuple[IPAddress, IPAddress]:
    start = _parse_member(f"{field}.start", start_text, network)
    end = _parse_member(f"{field}.end", end_text, network)
    if int(start) > int(end):
        raise InvalidPool(field, f"{start_text}-{end_text}", f"start {start} is after end {end}")
    return start, end


def _parse_exclude(field: str, text: str, network: IPNetwork) -> ExcludeSpec:
    if "-" in text:
        start_text, _, end_text = text.partition("-")
        start, end = _parse_range(field, start_text, end_text, network)
        return ExcludeSpec(f"{start}-{end}", Interval(int(start), int(end)))
    if "/" in text:
        try:
            excluded = parse_network(text)
        except ValueError as error:
            raise InvalidPool(field, text, f"not a valid CIDR ({error})") from None
        if excluded.version != network.version:
            raise InvalidPool(
                field, text, f"IPv{excluded.version} CIDR in an IPv{network.version} pool"
            )
        if not excluded.subnet_of(network):  # type: ignore[arg-type]
            raise InvalidPool(field, text, f"not inside the pool CIDR {network}")
        return ExcludeSpec(
            str(excluded),
            Interval(int(excluded.network_address), int(excluded.broadcast_address)),
        )
    address = _parse_member(field, text, network)
    return ExcludeSpec(str(address), Interval(int(address), int(address)))


def build_layout(
    *,
    cidr: str,
    gateway: str | None,
    ranges: Sequence[tuple[str, str]],
    exclude: Sequence[str],
) -> PoolLayout:
    """Validate a pool spec and compute its usable intervals.

    Raises InvalidPool, naming the field and the value, for any of these: a
    malformed CIDR or one with host bits set, a gateway, range or exclude that
    is outside the CIDR or of the other family, a range whose start is after
    its end, and a pool left with no usable address.
    """
    try:
        network = parse_network(cidr)
    except ValueError as error:
        try:
            loose = parse_network(cidr, strict=False)
        except ValueError:
            raise InvalidPool(
                "cidr", cidr, f"not a valid CIDR such as 10.0.0.0/24 or fd00::/64 ({error})"
            ) from None
        raise InvalidPool(
            "cidr", cidr, f"host bits are set; give the network address, e.g. {loose}"
        ) from None

    gateway_address = None
    if gateway is not None:
        gateway_address = _parse_member("gateway", gateway, network)

    parsed_ranges = sorted(
        (
            _parse_range(f"ranges[{index}]", start, end, network)
            for index, (start, end) in enumerate(ranges)
        ),
        key=lambda pair: (int(pair[0]), int(pair[1])),
    )
    excludes = sorted(
        (_parse_exclude(f"exclude[{index}]", text, network) for index, text in enumerate(exclude)),
        key=lambda spec: (spec.interval.first, spec.interval.last),
    )

    if parsed_ranges:
        base = [Interval(int(start), int(end)) for start, end in parsed_ranges]
    else:
        base = [Interval(int(network.network_address), int(network.broadcast_address))]
    removed = [spec.interval for spec in excludes]
    removed.extend(Interval(value, value) for value in reserved_addresses(network))
    if gateway_address is not None:
        removed.append(Interval(int(gateway_address), int(gateway_address)))
    intervals = subtract_intervals(base, removed)
    if not intervals:
        raise InvalidPool(
            "cidr",
            cidr,
            "the pool has no usable address once the gateway, the excluded addresses and the "
            "reserved network, broadcast or anycast addresses are removed; "
            "widen the CIDR or the ranges",
        )

    return PoolLayout(
        network=network,
        gateway=gateway_address,
        ranges=tuple(parsed_ranges),
        excludes=tuple(excludes),
        intervals=tuple(intervals),
    )


def next_fit_segments(intervals: Sequence[Interval], cursor: int | None) -> list[Interval]:
    """Order the usable intervals for a next-fit search that starts at ``cursor``.

    The search runs from the cursor to the end of the pool, then wraps to the
    start and ends just before the cursor, so every usable address is visited
    exactly once. A cursor outside every interval starts at the next interval.
    """
    if cursor is None:
        return list(intervals)
    index = bisect.bisect_left([interval.last for interval in intervals], cursor)
    if index == len(intervals):
        return list(intervals)
    current = intervals[index]
    if cursor <= current.first:
        return [*intervals[index:], *intervals[:index]]
    return [
        Interval(cursor, current.last),
        *intervals[index + 1 :],
        *intervals[:index],
        Interval(current.first, cursor - 1),
    ]


def skip_taken(candidate: int, taken: Iterable[int]) -> tuple[int, bool]:
    """Advance ``candidate`` past a sorted batch of held addresses at or after it.

    Returns the advanced candidate and whether a gap was found before the end of
    the batch. Without a gap, the candidate is one past the last held address,
    and the caller either reads the next batch or, when the batch was not full,
    takes the candidate if it is still inside the segment.
    """
    for value in taken:
        if value > candidate:
            return candidate, True
        candidate = value + 1
    return candidate, False
