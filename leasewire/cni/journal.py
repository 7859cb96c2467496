"""Journal of ADDs in progress, so that a node daemon killed mid-ADD cleans up on restart,
and the records of finished attachments that spare DEL a request to ipamd.

Before leasing, ADD writes one small file per attachment naming the owner and
netns, and, when an executable IPAM plugin allocates the addresses, the
configuration and CNI variables that the plugin's DEL needs. Before attach
it rewrites the file with the driver and its options.
It removes the file once ADD has succeeded or rolled back. A file found at
start-up belongs to an ADD that neither finished nor rolled back: the daemon
detaches it and releases its addresses before it serves again, and the
runtime, which saw the ADD fail, retries it.

The files are not fsynced. They only have to survive the death of the daemon
process, which leaves the page cache intact; a power loss takes the pod's
interfaces with it, and the pending lease expires in ipamd on its own.

Once ADD has confirmed the lease, ``AttachmentRecords`` keeps one file per
attachment with its network, driver, options and addresses, so that DEL knows
the driver recorded at ADD without asking ipamd. DEL removes it. Without the
file (daemon state lost, attachment made by another node daemon), DEL asks
ipamd for the driver recorded at confirm. When ipamd cannot be reached either,
DEL uses the attach profile that ipamd last returned for the network
(``profilecache.py``). GC drops the records of the attachments it releases.
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
ATTACHMENTS_DIRECTORY = "attachments"


@dataclass(frozen=True, kw_only=True)
class PluginCall:
    """Network configuration and CNI_* variables with which an IPAM plugin can run again."""

    config: dict[str, object]
    env: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class AddRecord:
    owner: Owner
    network: str
    netns: str
    driver: str
    options: dict[str, object]
    # The IPAM plugin that allocated the addresses. None when ipamd leased them.
    plugin: PluginCall | None = None

    def to_json(self) -> str:
        item: dict[str, object] = {
            "owner": self.owner.model_dump(mode="json", by_alias=True),
            "network": self.network,
            "netns": self.netns,
            "driver": self.driver,
            "options": self.options,
        }
        if self.plugin is not None:
            item["ipamPlugin"] = {"config": self.plugin.config, "env": self.plugin.env}
        return json.dumps(item)


def _plugin_call(item: object) -> PluginCall | None:
    """Read the "ipamPlugin" entry of a journal file. Entries of older daemons have none."""
    if item is None:
        return None
    if not isinstance(item, dict):
        raise TypeError(f"expected an object for ipamPlugin, got {item!r:.100}")
    return PluginCall(
        config=dict(item["config"]),
        env={str(key): str(value) for key, value in dict(item["env"]).items()},
    )


def _owner_file(directory: Path, owner: Owner) -> Path:
    key = f"{owner.cluster}/{owner.container_id}/{owner.ifname}"
    return directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


class AddJournal:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / JOURNAL_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, owner: Owner) -> Path:
        return _owner_file(self.directory, owner)

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
                        plugin=_plugin_call(item.get("ipamPlugin")),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("Removing unreadable ADD journal entry %s", path)
                path.unlink(missing_ok=True)
        return records


@dataclass(frozen=True, kw_only=True)
class AttachmentRecord:
    """What ADD made: the driver and options DEL must use, and the leased addresses."""

    network: str
    driver: str
    options: dict[str, object]
    addresses: tuple[str, ...]
    # ipamd's createdAt of each lease, in the order of ``addresses``: a queued
    # release of them is bounded by ipamd's clock. Empty in records of older daemons.
    created_at: tuple[str, ...] = ()


class AttachmentRecords:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / ATTACHMENTS_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, owner: Owner, record: AttachmentRecord) -> None:
        text = json.dumps(
            {
                "owner": owner.model_dump(mode="json", by_alias=True),
                "network": record.network,
                "driver": record.driver,
                "options": record.options,
                "addresses": list(record.addresses),
                "createdAt": list(record.created_at),
            }
        )
        write_atomically(_owner_file(self.directory, owner), text, 0o600, sync=False)

    def load(self, owner: Owner, network: str) -> AttachmentRecord | None:
        """Return the owner's record for ``network``; None when missing or unreadable."""
        path = _owner_file(self.directory, owner)
        try:
            item = json.loads(path.read_text(encoding="utf-8"))
            record = AttachmentRecord(
                network=str(item["network"]),
                driver=str(item["driver"]),
                options=dict(item["options"]),
                addresses=tuple(str(address) for address in item["addresses"]),
                created_at=tuple(str(value) for value in item.get("createdAt", [])),
            )
            recorded_owner = Owner.model_validate(item["owner"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("Ignoring unreadable attachment record %s", path)
            return None
        if recorded_owner != owner or record.network != network:
            return None
        return record

    def drop(self, owner: Owner) -> None:
        _owner_file(self.directory, owner).unlink(missing_ok=True)
