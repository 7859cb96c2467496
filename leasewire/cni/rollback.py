"""Undo of a failed ADD: detach the pod interface, then release the leases that ADD created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leasewire.api import Owner
from leasewire.cni.cniconfig import CniEnv, CniError
from leasewire.cni.delegate import LeaseSource
from leasewire.cni.ipamclient import (
    IpamClient,
    IpamRejectedError,
    IpamUnavailableError,
    NodeLease,
)
from leasewire.cni.journal import AttachmentRecord, AttachmentRecords
from leasewire.cni.releasequeue import ReleaseQueue, release_bound
from leasewire.drivers.base import DetachRequest, Driver, DriverError

if TYPE_CHECKING:
    from leasewire.cni.verbs import OwnerLogger


class AddRollback:
    """Undo step of ADD: detach the pod interface, then release the leases that ADD created.

    The leases go only once the interface is gone: an address that still sits
    on an interface must not be leased to another pod. When the detach fails,
    the lease is bound and recorded instead, so that the runtime's DEL or GC
    removes the interface and then releases it.
    """

    def __init__(
        self,
        ipam: IpamClient,
        attachments: AttachmentRecords | None,
        queue: ReleaseQueue,
        owner: Owner,
        network: str,
        leases: list[NodeLease],
        log: OwnerLogger,
        *,
        leaser: LeaseSource,
        release: bool,
    ) -> None:
        self.ipam = ipam
        self.attachments = attachments
        self.queue = queue
        self.owner = owner
        self.network = network
        self.leases = leases
        self.log = log
        self.leaser = leaser
        self.release = release
        # Driver, its name and the request that removes the pod interface. None before attach.
        self.detach: tuple[Driver, str, DetachRequest] | None = None

    def arm_detach(
        self, driver: Driver, driver_name: str, env: CniEnv, options: dict[str, object]
    ) -> None:
        request = DetachRequest(
            container_id=env.container_id, netns=env.netns, ifname=env.ifname, options=options
        )
        self.detach = (driver, driver_name, request)

    def disarm_detach(self) -> None:
        self.detach = None

    async def run(self) -> None:
        if self.detach is not None:
            driver, driver_name, request = self.detach
            try:
                await driver.detach(request)
            except DriverError:
                self.log.exception(
                    "Failed to detach while rolling back ADD, so the lease stays until DEL or GC "
                    "removes the interface"
                )
                await self._keep_lease(driver_name, dict(request.options))
                return
            self.log.info("Rolled back: interface detached")
        if self.release:
            await self._release()

    async def _keep_lease(self, driver_name: str, options: dict[str, object]) -> None:
        """Bind and record the lease of an interface that the rollback could not remove.

        A pending lease would expire and go to another pod while the address
        still sits on the interface. An IPAM plugin keeps its allocation until DEL.
        """
        if not isinstance(self.leaser, IpamClient):
            return
        try:
            await self.ipam.confirm_leases(self.owner, driver_name, options)
        except (IpamUnavailableError, IpamRejectedError) as error:
            self.log.error(
                "Failed to bind the lease of the interface left behind, so it may expire: %s", error
            )
        if self.attachments is not None:
            self.attachments.save(
                self.owner,
                AttachmentRecord(
                    network=self.network,
                    driver=driver_name,
                    options=options,
                    addresses=tuple(lease.address for lease in self.leases),
                    created_at=tuple(lease.created_at for lease in self.leases),
                ),
            )

    async def _release(self) -> None:
        try:
            await self.leaser.release_leases(self.owner, network=self.network)
        except IpamUnavailableError as error:
            # Confirm may have bound the lease, and a bound lease never expires.
            self.log.warning("ipamd is unavailable, queueing the rollback's release: %s", error)
            created_at = [lease.created_at for lease in self.leases]
            try:
                await self.queue.add(
                    self.owner, self.network, created_before=release_bound(created_at)
                )
            except OSError:
                self.log.exception("Failed to queue the rollback's release")
        except (IpamRejectedError, CniError):
            self.log.exception(
                "Failed to release the lease while rolling back ADD; "
                "an IPAM plugin keeps it until DEL"
            )
        else:
            self.log.info("Rolled back: lease released")
