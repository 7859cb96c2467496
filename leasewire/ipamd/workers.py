"""Several ipamd processes on one listen port (``leasewire ipamd --workers N``).

ipamd is stateless apart from the database (its allocation hints only save
work), so N processes on one host are N replicas: each binds the same port
with SO_REUSEPORT and the kernel spreads the connections over them. On
PostgreSQL the unique indexes keep them from handing out an address twice,
as with replicas on several hosts. SQLite has one writer per file, so more
than one worker is refused there.

The parent upgrades the schema once, starts the workers and waits. SIGTERM
or SIGINT is passed on to every worker. If one worker exits by itself, the
parent stops the others and exits with an error, so that the supervisor
(systemd, Kubernetes) restarts the whole set.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
"""Seconds the parent waits for the workers to finish after passing on a stop signal."""


@dataclass(frozen=True)
class WorkerSpec:
    """Settings of one worker process, passed to it by value (spawn)."""

    database_url: str
    host: str
    port: int
    pending_ttl_seconds: float
    log_level: int
    reuse_port: bool


def _worker_main(spec: WorkerSpec, serve: Callable[[WorkerSpec], None]) -> None:
    logging.basicConfig(
        level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    serve(spec)


def run_workers(count: int, spec: WorkerSpec, serve: Callable[[WorkerSpec], None]) -> int:
    """Run ``serve(spec)`` in ``count`` processes until a stop signal; return the exit status."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = [
        context.Process(target=_worker_main, args=(spec, serve), name=f"ipamd-worker-{number}")
        for number in range(count)
    ]
    requested = False

    def terminate_all() -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal requested
        requested = True
        log.info("passing signal %d on to %d ipamd workers", signum, len(processes))
        terminate_all()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        log.info(
            "ipamd serving on %s:%d with %d worker processes (pids %s)",
            spec.host,
            spec.port,
            count,
            ", ".join(str(process.pid) for process in processes),
        )
        wait([process.sentinel for process in processes])
        if not requested:
            for process in processes:
                if process.exitcode is not None:
                    log.error(
                        "ipamd worker %s (pid %s) exited with status %s; stopping the others",
                        process.name,
                        process.pid,
                        process.exitcode,
                    )
            terminate_all()
        for process in processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                log.warning("ipamd worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # A worker still starting when the stop came has no handler yet, so SIGTERM ends it at once.
    clean = requested and all(process.exitcode in (0, -signal.SIGTERM) for process in processes)
    return 0 if clean else 1
