"""Per-stage timings of one CNI call, for benchmarks and debugging.

The node daemon opens a ``Timings`` per call; code on the call's path adds the
seconds it spent in a stage (``ipamd``, ``netlink``) through ``measure``. The
totals travel back to the shim in the reply, which prints them when asked to
(``LEASEWIRE_SHIM_TIMINGS=1``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[dict[str, float] | None] = ContextVar("leasewire_timings", default=None)


@contextmanager
def record_call() -> Iterator[dict[str, float]]:
    """Collect the stage timings of the current call into the yielded dict, in seconds."""
    stages: dict[str, float] = {}
    token = _current.set(stages)
    start = time.perf_counter()
    try:
        yield stages
    finally:
        stages["total"] = time.perf_counter() - start
        _current.reset(token)


@contextmanager
def measure(stage: str) -> Iterator[None]:
    """Add the time spent in the block to ``stage`` of the current call, if one is recorded."""
    stages = _current.get()
    start = time.perf_counter()
    try:
        yield
    finally:
        if stages is not None:
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start
