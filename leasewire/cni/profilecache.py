"""The attach profile that ipamd last returned for each network on this node.

ADD stores it here whenever it changes. A DEL that finds no attachment record
and cannot reach ipamd uses it to pick the driver, so that a pod attached by
the profile's driver (macvlan, say) is not detached with the bridge default.

The file is small, one entry per network name, and written through a rename
with fsync, so it survives a power loss. It is only a hint. A missing,
unreadable or unwritable file is logged and treated as empty, so it does not
fail an ADD or a DEL.

NOTE: only the latest profile per network is kept. A pod attached before its
node's profile changed, whose record is lost, is detached with the newer driver.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import ValidationError

from leasewire.cni.ipamclient import AttachView
from leasewire.durable import write_atomically

logger = logging.getLogger(__name__)

PROFILES_FILE = "attach-profiles.json"


class ProfileCache:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PROFILES_FILE
        self._profiles = self._load()
        # True when the last write failed, so that the next ADD writes again
        # even if its profile equals the one in memory.
        self._unsaved = False

    def _load(self) -> dict[str, AttachView]:
        try:
            item = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("Ignoring unreadable attach profile cache %s: %s", self.path, error)
            return {}
        networks = item.get("networks") if isinstance(item, dict) else None
        if not isinstance(networks, dict):
            logger.warning("Ignoring attach profile cache %s without a networks object", self.path)
            return {}
        profiles: dict[str, AttachView] = {}
        for network, entry in networks.items():
            try:
                profiles[str(network)] = AttachView.model_validate(entry)
            except ValidationError as error:
                logger.warning(
                    "Ignoring the cached attach profile of network %r in %s: %s",
                    network,
                    self.path,
                    error,
                )
        return profiles

    def recall(self, network: str) -> AttachView | None:
        """Return the profile that ipamd last returned for ``network``, or None."""
        return self._profiles.get(network)

    def remember(self, network: str, profile: AttachView | None) -> None:
        """Store ``profile`` for ``network``, or forget the network when ipamd returned none.

        The file is rewritten only when the stored entry changes.
        """
        if self._profiles.get(network) == profile and not self._unsaved:
            return
        if profile is None:
            self._profiles.pop(network, None)
        else:
            self._profiles[network] = profile
        text = json.dumps(
            {
                "networks": {
                    name: entry.model_dump(mode="json")
                    for name, entry in sorted(self._profiles.items())
                }
            }
        )
        try:
            write_atomically(self.path, text, 0o600)
        except OSError as error:
            self._unsaved = True
            logger.warning("Failed to write attach profile cache %s: %s", self.path, error)
            return
        self._unsaved = False
        if profile is None:
            logger.info("Forgot the attach profile of network %r: ipamd returned none", network)
        else:
            logger.info(
                "Stored attach profile %r (driver %s) for network %r",
                profile.profile,
                profile.driver,
                network,
            )
