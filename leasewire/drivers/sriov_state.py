"""Records of the VFs that the SR-IOV driver has given to pods.

One JSON file per VF, named by its PCI address, in the driver's state
directory. Creating the file with O_EXCL is what claims the VF, so two
attaches cannot take the same VF. The record keeps what detach needs to undo
the attach: the VF's original interface name and MAC, and its PF-side MAC,
VLAN, trust, spoof check, link state and TX rates. Detach finds the record by
owner (container id, interface name); no record means nothing to undo.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from leasewire.durable import write_synced

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/run/leasewire/sriov"


@dataclass(frozen=True, kw_only=True)
class VfSettings:
    """PF-side settings of one VF ("ip link show PF" lists them per VF)."""

    mac: str
    vlan: int
    qos: int
    trust: bool
    spoof_check: bool
    # IFLA_VF_LINK_STATE_*: 0 auto, 1 enable, 2 disable.
    link_state: int
    # Mbit/s; 0 means no limit.
    min_tx_rate: int
    max_tx_rate: int


@dataclass(frozen=True, kw_only=True)
class VfRecord:
    pci_address: str
    pf: str
    vf_index: int
    container_id: str
    ifname: str
    netns: str
    original_name: str
    original_mac: str
    original: VfSettings

    @property
    def holder(self) -> str:
        return f"container {self.container_id} interface {self.ifname} (netns {self.netns})"


class VfStore:
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def path(self, pci_address: str) -> Path:
        return self.directory / f"vf-{pci_address}.json"

    def claim(self, record: VfRecord) -> VfRecord | None:
        """Write ``record`` unless the VF is claimed already; return the existing record then."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps(asdict(record)).encode("utf-8")
        try:
            write_synced(self.path(record.pci_address), data, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return self.read(record.pci_address)
        return None

    def read(self, pci_address: str) -> VfRecord | None:
        try:
            data = json.loads(self.path(pci_address).read_text())
        except FileNotFoundError:
            return None
        data["original"] = VfSettings(**data["original"])
        return VfRecord(**data)

    def find_owner(self, container_id: str, ifname: str) -> VfRecord | None:
        if not self.directory.is_dir():
            return None
        for path in sorted(self.directory.glob("vf-*.json")):
            record = self.read(path.stem.removeprefix("vf-"))
            if record and record.container_id == container_id and record.ifname == ifname:
                return record
        return None

    def release(self, pci_address: str) -> None:
        try:
            self.path(pci_address).unlink()
        except FileNotFoundError:
            logger.debug("Record of VF %s was already gone", pci_address)
