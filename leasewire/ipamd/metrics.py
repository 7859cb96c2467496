"""Prometheus metrics of ipamd, in the text exposition format (version 0.0.4).

Few metrics, so they are kept by hand instead of through a client library:
the allocation latency histogram, the errors returned by code, and per-pool
size, allocated and free gauges that are counted from the database at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total}")
        lines.append(f"{name}_count {self.count}")
        return lines


@dataclass(frozen=True)
class PoolUsage:
    name: str
    size: int
    allocated: int
    free: int


@dataclass
class Metrics:
    """Counters and histograms of one ipamd process."""

    allocation_seconds: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)

    def render(self, pools: Iterable[PoolUsage]) -> str:
        lines = [
            "# HELP leasewire_ipamd_allocation_seconds Time to serve POST /v1/leases.",
            "# TYPE leasewire_ipamd_allocation_seconds histogram",
            *self.allocation_seconds.render("leasewire_ipamd_allocation_seconds"),
            "# HELP leasewire_ipamd_errors_total Error answers by stable error code.",
            "# TYPE leasewire_ipamd_errors_total counter",
        ]
        for code, count in sorted(self.errors.items()):
            lines.append(f'leasewire_ipamd_errors_total{{code="{_escape(code)}"}} {count}')
        gauges = {
            "size": "Usable addresses of the pool.",
            "allocated": "Pending and bound leases of the pool.",
            "free": "Addresses the next allocation may take.",
        }
        usage = list(pools)
        for gauge, text in gauges.items():
            name = f"leasewire_ipamd_pool_{gauge}"
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} gauge")
            for pool in usage:
                lines.append(f'{name}{{pool="{_escape(pool.name)}"}} {getattr(pool, gauge)}')
        return "\n".join(lines) + "\n"
