"""Journal of ADDs in progress, so that a node daemon killed mid-ADD cleans up on restart.

Before attach, ADD writes one small file per attachment naming the owner,
netns, driver and options; it removes the file once ADD has succeeded or
rolled back. A file found at start-up belongs to an ADD that neither finished
nor rolled back: the daemon detaches it and releases its leases before it
serves again, and the runtime, which saw the ADD fail, retries it.

The files are not fsynced. They only have to survive the death of the daemon
process, which leaves the page cache intact; a power loss takes the pod's
interfaces with it, and the pending lease expires in ipamd on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from leasewire.api import Owner
from leasewire.durable import write_atomically

logger = logging.getLogger(__name__)

JOURNAL_DIRECTORY = "adds-in-progress"


@dataclass(frozen=True, kw_only=True)
class AddRecord:
    owner: Owner
    network: str
    netns: str
    driver: str
    options: dict[str, object]

    def to_json(self) -> str:
        return json.dumps(
            {
                "owner": self.owner.model_dump(mode="json", by_alias=True),
                "network": self.network,
                "netns": self.netns,
                "driver": self.driver,
                "options": self.options,
            }
        )


class AddJournal:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / JOURNAL_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, owner: Owner) -> Path:
        key = f"{owner.cluster}/{owner.container_id}/{owner.ifname}"
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def begin(self, record: AddRecord) -> None:
        write_atomically(self._path(record.owner), record.to_json(), 0o600, sync=False)

    def end(self, owner: Owner) -> None:
        self._path(owner).unlink(missing_ok=True)

    def leftovers(self) -> list[AddRecord]:
        """Return the records of ADDs that a previous daemon left unfinished."""
        records: list[AddRecord] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                item = json.loads(path.read_text(encoding="utf-8"))
                records.append(
                    AddRecord(
                        owner=Owner.model_validate(item["owner"]),
                        network=str(item["network"]),
                        netns=str(item["netns"]),
                        driver=str(item["driver"]),
                        options=dict(item["options"]),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("Removing unreadable ADD journal entry %s", path)
                path.unlink(missing_ok=True)
        return records
