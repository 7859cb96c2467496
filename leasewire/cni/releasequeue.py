"""Durable queue of lease releases that ipamd could not take when they happened.

DEL removes the pod's interface even when ipamd is unreachable, writes the
release here and reports success, so that the runtime can finish tearing the
pod down. The node daemon replays the queue until ipamd takes every entry,
also after its own restart.

The file is append-only JSON lines, one release per line, flushed with fsync
before DEL returns: a bound lease that is lost here would hold its address
forever. Replay rewrites the file with the entries that are left, through a
temporary file and a rename, so that a crash leaves either the old or the new
list.

An entry is replayed with ``createdBefore`` just after ipamd's own createdAt of
the owner's newest lease, when the node daemon has it, so that a late replay
never releases a lease that a newer ADD of the same owner created. ipamd
compares that bound with its own clock, so a time from the node's clock would
release nothing when the node's clock is behind ipamd's. Without ipamd's time
the replay releases whatever the owner holds: ADD replays the owner's queued
release before it leases (see ``CniService.add``), so no newer lease of the
owner can exist while the entry waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from leasewire.api import Owner
from leasewire.cni.ipamclient import IpamClient, IpamRejectedError, IpamUnavailableError
from leasewire.durable import fsync_directory, write_atomically, write_synced

logger = logging.getLogger(__name__)

QUEUE_FILE = "release-queue.jsonl"


@dataclass(frozen=True, kw_only=True)
class QueuedRelease:
    owner: Owner
    network: str
    # RFC 3339 UTC time the release was queued, by the node's clock. Replay does not use it.
    queued_at: str
    # RFC 3339 time by ipamd's clock. Leases created at or after it are kept.
    # None when the node daemon had no ipamd time, and in lines of older daemons.
    created_before: str | None = None

    def to_json(self) -> str:
        item: dict[str, object] = {
            "owner": self.owner.model_dump(mode="json", by_alias=True),
            "network": self.network,
            "queuedAt": self.queued_at,
        }
        if self.created_before is not None:
            item["createdBefore"] = self.created_before
        return json.dumps(item)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def just_after(timestamp: str) -> str | None:
    """Return an RFC 3339 time one microsecond after ``timestamp``, or None if unreadable.

    ipamd releases only leases created strictly before ``createdBefore``, so
    the bound for a lease created at ``timestamp`` is one microsecond later.
    A time without a zone is UTC, as ipamd on SQLite sends it.
    """
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment + timedelta(microseconds=1)).isoformat()


def release_bound(created_at: list[str]) -> str | None:
    """Return the ``createdBefore`` that covers leases created at ``created_at`` (ipamd's times).

    None when no time is readable: the release is then not bounded by time.
    """
    bounds = [bound for bound in (just_after(value) for value in created_at if value) if bound]
    if not bounds:
        return None
    return max(bounds, key=lambda bound: datetime.fromisoformat(bound))


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


class ReleaseQueue:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / QUEUE_FILE
        self._entries = self._load()
        # Serialises replays with each other and with rewrites of the file.
        self._lock = asyncio.Lock()
        # Serialises appends with rewrites, so that an entry added while a
        # replay rewrites the file is neither written to the replaced file nor
        # dropped from the list. Held only around the file writes, never while
        # waiting for ipamd.
        self._file_lock = asyncio.Lock()

    def _load(self) -> list[QueuedRelease]:
        entries: list[QueuedRelease] = []
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return entries
        # A line cut short must not stay last, or the next append would be
        # glued to it and lost at the next start.
        damaged = bool(text) and not text.endswith("\n")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                entries.append(
                    QueuedRelease(
                        owner=Owner.model_validate(item["owner"]),
                        network=str(item.get("network", "")),
                        queued_at=str(item["queuedAt"]),
                        created_before=_optional_text(item.get("createdBefore")),
                    )
                )
            except (ValueError, KeyError, TypeError):
                # A line cut short by a crash during an append; the DEL that
                # wrote it did not return success, so the runtime retries it.
                logger.warning("Skipping unreadable line %d of %s: %.200s", number, self.path, line)
                damaged = True
        if damaged:
            try:
                self._rewrite(entries)
            except OSError:
                logger.exception("Failed to rewrite %s without its damaged lines", self.path)
        if entries:
            logger.info("%d queued lease releases in %s", len(entries), self.path)
        return entries

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, owner: Owner) -> bool:
        return any(entry.owner == owner for entry in self._entries)

    async def add(
        self, owner: Owner, network: str, *, created_before: str | None = None
    ) -> QueuedRelease:
        """Append a release and fsync it before returning.

        ``created_before`` is a time by ipamd's clock (see ``release_bound``).
        """
        entry = QueuedRelease(
            owner=owner, network=network, queued_at=now_rfc3339(), created_before=created_before
        )
        async with self._file_lock:
            await asyncio.to_thread(self._append, entry)
            self._entries.append(entry)
        logger.warning(
            "Queued the release of %s/%s/%s until ipamd responds",
            owner.cluster,
            owner.container_id,
            owner.ifname,
        )
        return entry

    def _append(self, entry: QueuedRelease) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (entry.to_json() + "\n").encode("utf-8")
        write_synced(self.path, line, os.O_APPEND | os.O_CREAT)

    def _rewrite(self, entries: list[QueuedRelease]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            fsync_directory(self.path.parent)
            return
        write_atomically(self.path, "".join(entry.to_json() + "\n" for entry in entries), 0o600)

    async def replay(self, ipam: IpamClient, owner: Owner | None = None) -> int:
        """Send the queued releases (only ``owner``'s when given) to ipamd.

        Returns the number of entries left. Stops at the first entry that
        ipamd cannot take because it is unavailable; an entry that ipamd
        rejects is logged and dropped, because sending it again cannot succeed.
        """
        async with self._lock:
            done: list[QueuedRelease] = []
            for entry in list(self._entries):
                if owner is not None and entry.owner != owner:
                    continue
                try:
                    released = await ipam.release_leases(
                        entry.owner, network=entry.network, created_before=entry.created_before
                    )
                except IpamUnavailableError as error:
                    logger.info("Release queue waits for ipamd: %s", error)
                    break
                except IpamRejectedError as error:
                    logger.error(
                        "ipamd rejected the queued release of %s: %s %s; dropping it",
                        entry.owner,
                        error.code,
                        error.message,
                    )
                else:
                    logger.info(
                        "Replayed the queued release of %s/%s/%s: %d leases released",
                        entry.owner.cluster,
                        entry.owner.container_id,
                        entry.owner.ifname,
                        len(released),
                    )
                done.append(entry)

            if done:
                async with self._file_lock:
                    remaining = [entry for entry in self._entries if entry not in done]
                    await asyncio.to_thread(self._rewrite, remaining)
                    self._entries = remaining
            return len(self._entries)

    async def run_replays(self, ipam: IpamClient, interval: float) -> None:
        """Replay the queue every ``interval`` seconds while it has entries, until cancelled."""
        while True:
            if self._entries:
                try:
                    await self.replay(ipam)
                except OSError:
                    logger.exception("Failed to rewrite %s; retrying later", self.path)
            await asyncio.sleep(interval)
