"""Settings of the leasewire operator: where ipamd is, which cluster this is, and its timings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GROUP = "leasewire.io"
VERSION = "v1alpha1"
FINALIZER = "leasewire.io/operator"
"""Finalizer that holds an IPPool or AttachProfile until ipamd has let go of it."""


@dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    ipamd_url: str
    cluster: str
    token_file: Path | None = None
    namespaces: tuple[str, ...] = ()
    """Namespaces whose pods this operator serves; empty serves every namespace."""

    peering: str = "leasewire"
    standalone: bool = False
    priority: int | None = None
    """Peering priority; None picks a random one, so that of several replicas one acts."""

    pool_refresh_seconds: float = 60.0
    """Interval of the pool timer: usage counts in the status and the lease reconciliation."""

    pod_grace_seconds: float = 120.0
    """Minimum time between the two pod listings from which a lease's pod UID must be absent.
    It covers a pod that the API server lists late relative to its lease (ADD runs before the
    pod's first status update)."""

    node_grace_seconds: float = 300.0
    """Wait after a node's deletion before its leases are released. A node deleted and
    registered again within it (a kubelet restart with a wiped object) keeps its leases."""

    retry_seconds: float = 10.0
    """Delay before a handler retries after ipamd was unreachable or a pool was still in use."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
