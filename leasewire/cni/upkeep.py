"""GC and STATUS, and the clean-up of ADDs that a killed node daemon left unfinished."""

from __future__ import annotations

import logging
from collections import defaultdict

from leasewire.cni.cniconfig import (
    ERR_DEGRADED,
    ERR_INVALID_CONFIG,
    ERR_NOT_AVAILABLE,
    ERR_TRY_AGAIN_LATER,
    CniError,
    Command,
    NetworkConfig,
)
from leasewire.cni.degraded import link_problems, needed_links
from leasewire.cni.delegate import plugin_for_del
from leasewire.cni.ipamclient import IpamRejectedError, IpamUnavailableError, NodeLease
from leasewire.cni.journal import AddRecord
from leasewire.cni.releasequeue import release_bound
from leasewire.cni.timings import measure
from leasewire.cni.verbs import (
    CniService,
    OwnerKey,
    OwnerLogger,
    owner_key,
    owner_logger,
    recorded_driver,
)
from leasewire.drivers.base import DetachRequest, DriverError

logger = logging.getLogger(__name__)

# The GC list key of CNI 1.1 as libcni 1.2 and later send it, and its name in
# the spec-v1.1.0 tag, which libcni 1.2.3 and later also send.
VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def _valid_attachments(config: NetworkConfig) -> list[dict[str, str]] | None:
    for key in VALID_ATTACHMENTS_KEYS:
        if key not in config.raw:
            continue
        value = config.raw[key]
        if not isinstance(value, list):
            raise CniError(
                ERR_INVALID_CONFIG, f"invalid {key!r} {value!r}: expected a list of attachments"
            )
        attachments: list[dict[str, str]] = []
        for item in value:
            container_id = item.get("containerID") if isinstance(item, dict) else None
            ifname = item.get("ifname") if isinstance(item, dict) else None
            if not isinstance(container_id, str) or not isinstance(ifname, str):
                raise CniError(
                    ERR_INVALID_CONFIG,
                    f"invalid attachment {item!r} in {key!r}: expected {{containerID, ifname}}",
                )
            attachments.append({"containerID": container_id, "ifname": ifname})
        return attachments
    return None


async def collect_garbage(service: CniService, config: NetworkConfig) -> str:
    """Release this node's leases of the network whose attachments are not valid.

    Returns a note for stderr. Without a list of valid attachments nothing is
    released: wiping everything would also take the leases that another
    runtime made with the same network name.
    """
    valid = _valid_attachments(config)
    if valid is None:
        logger.info("GC of network %s without a list of valid attachments: skipped", config.name)
        return (
            "leasewire: GC got neither cni.dev/valid-attachments nor cni.dev/attachments; "
            "nothing was released\n"
        )
    # ADDs in progress in this daemon are not in the runtime's list yet.
    for cluster, container_id, ifname in service.locks.held_keys():
        if cluster == service.cluster:
            valid.append({"containerID": container_id, "ifname": ifname})
    valid_keys = {(item["containerID"], item["ifname"]) for item in valid}
    held = await service.ipam.node_leases(
        cluster=service.cluster, node=service.node, network=config.name, state="held"
    )
    stale: dict[OwnerKey, list[NodeLease]] = defaultdict(list)
    for lease in held:
        if (lease.owner.container_id, lease.owner.ifname) not in valid_keys:
            stale[owner_key(lease.owner)].append(lease)

    # The interface goes first and the lease only after it, as in DEL: a
    # lease released while its address still sits on an interface could be
    # handed to another pod once its cooldown ends.
    failures: list[str] = []
    for key, leases in stale.items():
        owner = leases[0].owner
        log = owner_logger(owner)
        driver_name, options = recorded_driver(config, leases)
        # The owner lock keeps GC apart from an ADD or DEL of the same attachment.
        async with service.locks.hold(key):
            try:
                with measure("netlink"):
                    await service.drivers.get(driver_name).detach(
                        DetachRequest(
                            container_id=owner.container_id,
                            netns="",
                            ifname=owner.ifname,
                            options=options,
                        )
                    )
            except (DriverError, LookupError) as error:
                log.error("GC kept the lease because removing the interface failed: %s", error)
                failures.append(f"{owner.container_id}/{owner.ifname}: {error}")
                continue
            # ipamd's own creation times bound the release, so that a lease
            # created after the listing (a new ADD) is never taken.
            await service.ipam.release_leases(
                owner,
                network=config.name,
                created_before=release_bound([lease.created_at for lease in leases]),
            )
        log.info("GC released %s", ", ".join(lease.address for lease in leases))
        if service.attachments is not None:
            service.attachments.drop(owner)

    if failures:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"GC could not remove the interfaces of {len(failures)} of {len(stale)} stale "
            "attachments and kept their leases",
            "; ".join(failures),
        )
    return ""


async def report_status(service: CniService, config: NetworkConfig) -> None:
    """Raise ERR_NOT_AVAILABLE (50) when ipamd cannot serve an ADD of this network."""
    try:
        await service.ipam.healthy()
    except IpamUnavailableError as error:
        raise CniError(
            ERR_NOT_AVAILABLE,
            f"cannot serve ADD: {error}",
            "start ipamd or check the node's route to it",
        ) from error
    for pool in config.pools:
        try:
            free = await service.ipam.pool_free(pool)
        except IpamUnavailableError as error:
            raise CniError(ERR_NOT_AVAILABLE, f"cannot serve ADD: {error}") from error
        except IpamRejectedError as error:
            raise CniError(
                ERR_NOT_AVAILABLE, f"cannot serve ADD: pool {pool!r}: {error.message}"
            ) from error
        if free == 0:
            raise CniError(
                ERR_NOT_AVAILABLE,
                f"cannot serve ADD: pool {pool!r} is exhausted",
                "release leases or enlarge the pool's ranges",
            )
    await _report_degraded(service, config)


async def _report_degraded(service: CniService, config: NetworkConfig) -> None:
    """Raise ERR_DEGRADED (51) when a host link that live pods of the network use is broken."""
    try:
        leases = await service.ipam.node_leases(
            cluster=service.cluster, node=service.node, network=config.name
        )
    except IpamUnavailableError as error:
        raise CniError(ERR_NOT_AVAILABLE, f"cannot serve ADD: {error}") from error
    problems = await link_problems(needed_links(leases))
    if problems:
        raise CniError(
            ERR_DEGRADED,
            f"existing attachments of network {config.name!r} on node {service.node!r} are "
            f"degraded: {'; '.join(problems)}",
            "recreate the link or set it up; pods wired before keep no connectivity until then",
        )


async def recover_unfinished_adds(service: CniService) -> int:
    """Undo the ADDs that a previous daemon left in its journal; return how many.

    The interface goes first. Only once it is gone are the addresses released,
    through the IPAM plugin that allocated them or through ipamd. When the
    interface cannot be removed, ipamd's lease is bound so that it cannot
    expire, and the journal entry stays, so that the next start tries again.
    The runtime's DEL or GC may remove both before that.
    """
    records = service.journal.leftovers()
    for record in records:
        log = owner_logger(record.owner)
        log.warning("Undoing an ADD that a previous node daemon left unfinished")
        # An entry without a driver was written before the leasing, and no
        # interface exists before the entry names the driver.
        if record.driver and not await _detach_unfinished(service, record, log):
            continue
        if record.plugin is not None:
            await _release_through_plugin(record, log)
        else:
            await _release_through_ipamd(service, record, log)
        service.journal.end(record.owner)
    return len(records)


async def _detach_unfinished(service: CniService, record: AddRecord, log: OwnerLogger) -> bool:
    """Remove the interface of an unfinished ADD; False when that failed and its lease was kept."""
    try:
        await service.drivers.get(record.driver).detach(
            DetachRequest(
                container_id=record.owner.container_id,
                netns=record.netns,
                ifname=record.owner.ifname,
                options=record.options,
            )
        )
    except (DriverError, LookupError):
        log.exception(
            "Failed to detach the unfinished ADD, so its addresses stay allocated "
            "until the runtime's DEL or the next start of the node daemon"
        )
        if record.plugin is None:
            await _bind_unfinished_lease(service, record, log)
        return False
    return True


async def _bind_unfinished_lease(service: CniService, record: AddRecord, log: OwnerLogger) -> None:
    """Bind the pending lease of an interface that could not be removed, so it cannot expire.

    Confirm also records the driver, which a DEL without an attachment record reads from ipamd.
    """
    try:
        await service.ipam.confirm_leases(record.owner, record.driver, record.options)
    except (IpamUnavailableError, IpamRejectedError) as error:
        log.error(
            "Failed to bind the lease of the interface left behind, so it may expire: %s", error
        )


async def _release_through_plugin(record: AddRecord, log: OwnerLogger) -> None:
    assert record.plugin is not None
    try:
        plugin = plugin_for_del(record.plugin)
        await plugin.run(Command.DEL)
    except CniError as error:
        # The runtime, which saw the ADD fail, sends DEL with the same
        # configuration, and that DEL runs the plugin again.
        log.error(
            "IPAM plugin DEL of the unfinished ADD failed, the runtime's DEL retries it: %s %s",
            error.msg,
            error.details,
        )
        return
    log.info("IPAM plugin %r released the unfinished ADD's addresses", plugin.type)


async def _release_through_ipamd(service: CniService, record: AddRecord, log: OwnerLogger) -> None:
    # ipamd's createdAt of the leases bounds the release, so that the node's
    # clock plays no part in which leases ipamd releases.
    created_before: str | None = None
    try:
        leases = await service.ipam.find_leases(record.owner, record.network)
        if not leases:
            log.info("ipamd has no lease of the unfinished ADD left")
            return
        created_before = release_bound([lease.created_at for lease in leases])
        await service.ipam.release_leases(
            record.owner, network=record.network, created_before=created_before
        )
    except IpamUnavailableError:
        # NOTE: when ipamd did not return the leases, the queued release has no
        # time bound. A retried ADD of this owner replays it before it leases again.
        await service.queue.add(record.owner, record.network, created_before=created_before)
    except IpamRejectedError:
        log.exception("ipamd rejected the release of the unfinished ADD's lease")
    else:
        log.info("Released the unfinished ADD's leases")
