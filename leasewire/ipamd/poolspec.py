"""Validation and canonical form of a pool spec: routes, DNS, selectors, overlap between pools.

The address rules (CIDR, gateway, ranges, excludes) are in ``allocator.py``;
this module adds the options that travel with a lease and the rule that two
pools one cluster can use never share an address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leasewire.api import PoolSpec
from leasewire.ipamd.addresses import IPNetwork, parse_address, parse_network
from leasewire.ipamd.allocator import Interval, PoolLayout, build_layout, merge_intervals
from leasewire.ipamd.errors import InvalidPool, PoolOverlap
from leasewire.ipamd.models import Pool


@dataclass(frozen=True)
class CanonicalSpec:
    """A pool spec in the form stored in the database, so that two specs compare by value."""

    cidr: str
    gateway: str | None
    ranges: list[list[str]]
    excludes: list[str]
    routes: list[dict[str, str]]
    dns: dict[str, list[str]]
    cooldown_seconds: int
    priority: int
    selectors: dict[str, dict[str, str]]
    cluster: str | None
    vlan: int | None


def normalize_dns(dns: dict[str, Any] | None) -> dict[str, list[str]]:
    dns = dns or {}
    return {key: list(dns.get(key, [])) for key in ("nameservers", "search", "options")}


def normalize_selectors(selectors: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    selectors = selectors or {}
    return {key: dict(selectors.get(key, {})) for key in ("namespaceLabels", "nodeLabels")}


def layout_of(pool: Pool) -> PoolLayout:
    """Rebuild the layout of a stored pool. Its spec was validated when it was stored."""
    return build_layout(
        cidr=pool.cidr,
        gateway=pool.gateway,
        ranges=[(start, end) for start, end in pool.ranges],
        exclude=pool.excludes,
    )


def _canonical_routes(spec: PoolSpec) -> list[dict[str, str]]:
    routes: list[dict[str, str]] = []
    for index, route in enumerate(spec.routes):
        field = f"routes[{index}]"
        try:
            destination = parse_network(route.dst)
        except ValueError as error:
            raise InvalidPool(f"{field}.dst", route.dst, f"not a valid CIDR ({error})") from None
        canonical = {"dst": str(destination)}
        if route.gw is not None:
            try:
                gateway = parse_address(route.gw)
            except ValueError:
                raise InvalidPool(f"{field}.gw", route.gw, "not an IP address") from None
            if gateway.version != destination.version:
                raise InvalidPool(
                    f"{field}.gw",
                    route.gw,
                    f"IPv{gateway.version} next hop for the IPv{destination.version} "
                    f"destination {destination}",
                )
            canonical["gw"] = str(gateway)
        routes.append(canonical)
    return routes


def _canonical_dns(spec: PoolSpec) -> dict[str, list[str]]:
    nameservers: list[str] = []
    for index, server in enumerate(spec.dns.nameservers):
        try:
            nameservers.append(str(parse_address(server)))
        except ValueError:
            raise InvalidPool(f"dns.nameservers[{index}]", server, "not an IP address") from None
    return {
        "nameservers": nameservers,
        "search": list(spec.dns.search),
        "options": list(spec.dns.options),
    }


def canonical_spec(spec: PoolSpec) -> tuple[PoolLayout, CanonicalSpec]:
    """Validate ``spec`` and return its layout and canonical form. Raises InvalidPool."""
    layout = build_layout(
        cidr=spec.cidr,
        gateway=spec.gateway,
        ranges=[(item.start, item.end) for item in spec.ranges],
        exclude=spec.exclude,
    )
    canonical = CanonicalSpec(
        cidr=str(layout.network),
        gateway=None if layout.gateway is None else str(layout.gateway),
        ranges=[[str(start), str(end)] for start, end in layout.ranges],
        excludes=[exclude.text for exclude in layout.excludes],
        routes=_canonical_routes(spec),
        dns=_canonical_dns(spec),
        cooldown_seconds=spec.cooldown_seconds,
        priority=spec.priority,
        selectors={
            "namespaceLabels": dict(spec.selectors.namespace_labels),
            "nodeLabels": dict(spec.selectors.node_labels),
        },
        cluster=spec.cluster,
        vlan=spec.vlan,
    )
    return layout, canonical


def _base_intervals(network: IPNetwork, ranges: list[tuple[int, int]]) -> list[Interval]:
    """Return the addresses a pool spans: its ranges, or its whole CIDR without ranges."""
    if ranges:
        return merge_intervals(Interval(first, last) for first, last in ranges)
    return [Interval(int(network.network_address), int(network.broadcast_address))]


def _stored_base(pool: Pool) -> list[Interval]:
    ranges = [(int(parse_address(start)), int(parse_address(end))) for start, end in pool.ranges]
    return _base_intervals(parse_network(pool.cidr), ranges)


def _first_common(left: list[Interval], right: list[Interval]) -> int | None:
    """Return the first address in both sorted interval lists, or None."""
    i = j = 0
    while i < len(left) and j < len(right):
        first = max(left[i].first, right[j].first)
        if first <= min(left[i].last, right[j].last):
            return first
        if left[i].last < right[j].last:
            i += 1
        else:
            j += 1
    return None


def scopes_meet(left: str | None, right: str | None) -> bool:
    """Tell whether some cluster can use both pools: a global pool (None) meets every scope."""
    return left is None or right is None or left == right


async def check_overlap(
    session: AsyncSession, name: str, layout: PoolLayout, cluster: str | None
) -> None:
    """Raise PoolOverlap if another pool that a common cluster can use spans the same addresses.

    Pools may share a CIDR when their ranges are disjoint.
    """
    mine = _base_intervals(layout.network, [(int(start), int(end)) for start, end in layout.ranges])
    others = await session.execute(
        select(Pool).where(Pool.name != name, Pool.ip_version == layout.version)
    )
    for other in others.scalars():
        if not scopes_meet(cluster, other.cluster):
            continue
        common = _first_common(mine, _stored_base(other))
        if common is None:
            continue
        address = layout.network.network_address.__class__(common)
        scope = "global" if other.cluster is None else f"cluster {other.cluster!r}"
        raise PoolOverlap(
            f"pool {name!r} overlaps pool {other.name!r} ({other.cidr}, {scope}) from "
            f"{address} on; choose disjoint CIDRs or ranges, or scope the pools to "
            "different clusters",
            {"pool": name, "other": other.name, "address": str(address)},
        )
