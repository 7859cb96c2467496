"""The CNI verbs as the node daemon runs them: lease from ipamd, let the attach
driver wire the pod, confirm the lease, and undo everything on failure.

``CniService.handle`` takes the CNI environment and the network configuration
text and returns what the shim prints and the exit code it returns. Every
failure becomes a CNI error object; nothing is raised to the HTTP layer.
GC and STATUS live in ``upkeep``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

from leasewire.api import Owner, PodRef
from leasewire.cni.cniconfig import (
    DEFAULT_DRIVER,
    ERR_CHECK_FAILED,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERNAL,
    ERR_TRY_AGAIN_LATER,
    FIRST_VERSION,
    SUPPORTED_VERSIONS,
    CniEnv,
    CniError,
    Command,
    NetworkConfig,
    parse_command,
    parse_env,
    parse_network_config,
    requested_addresses,
    requested_mac,
    version_of,
)
from leasewire.cni.cniresult import (
    CniResult,
    PreviousAddress,
    ResultIP,
    ResultRoute,
    default_route,
    format_result,
    previous_address,
    previous_result,
)
from leasewire.cni.delegate import DelegatedLeases, LeaseSource, collect_stderr, ipam_plugin
from leasewire.cni.errors import to_cni_error
from leasewire.cni.ipamclient import (
    AttachView,
    IpamClient,
    IpamRejectedError,
    IpamUnavailableError,
    LeaseRequest,
    NodeLease,
)
from leasewire.cni.journal import AddJournal, AddRecord, AttachmentRecord, AttachmentRecords
from leasewire.cni.podnet import PodExtras, apply_extras, check_pod, ensure_pod_interface_free
from leasewire.cni.profilecache import ProfileCache
from leasewire.cni.releasequeue import ReleaseQueue, release_bound
from leasewire.cni.rollback import AddRollback
from leasewire.cni.timings import measure, record_call
from leasewire.drivers.base import (
    AttachRequest,
    CheckRequest,
    DetachRequest,
    InterfaceExistsError,
    IPAddress,
    IPInterface,
    PodAddress,
)
from leasewire.drivers.netlink import sharing_netns
from leasewire.drivers.registry import DriverSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CniReply:
    """Output of one CNI call: the shim's stdout and stderr, its exit code, and stage timings."""

    stdout: str
    exit_code: int
    stderr: str = ""
    # Seconds spent per stage ("ipamd", "netlink", "total").
    timings: dict[str, float] = field(default_factory=dict)


class OwnerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the attachment's owner key."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['owner'] if self.extra else '?'}] {msg}", kwargs


# (cluster, container id, ifname)
OwnerKey = tuple[str, str, str]


class KeyedLocks:
    """One asyncio lock per attachment, dropped once no task holds or waits for it."""

    def __init__(self) -> None:
        # key -> (lock, [number of holders and waiters])
        self._entries: dict[OwnerKey, tuple[asyncio.Lock, list[int]]] = {}

    def held_keys(self) -> list[OwnerKey]:
        """Return the keys that a task holds or waits for."""
        return list(self._entries)

    @asynccontextmanager
    async def hold(self, key: OwnerKey) -> AsyncIterator[None]:
        lock, users = self._entries.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._entries[key]


def owner_logger(owner: Owner) -> OwnerLogger:
    key = f"{owner.cluster}/{owner.container_id}/{owner.ifname}"
    return OwnerLogger(logger, {"owner": key})


def choose_driver(config: NetworkConfig, lease: NodeLease | None) -> tuple[str, dict[str, object]]:
    """Pick the driver for a new attachment and its options.

    The configuration's "driver" wins, then the attach profile that ipamd
    returns with the lease, then the bridge driver. The configuration's
    options are laid over the profile's when both name the same driver.
    """
    return driver_for_profile(config, lease.attach if lease is not None else None)


def driver_for_profile(
    config: NetworkConfig, profile: AttachView | None
) -> tuple[str, dict[str, object]]:
    """Pick the configuration's driver, else the attach profile's, else the bridge driver."""
    if config.driver is not None:
        if profile is not None and profile.driver == config.driver:
            return config.driver, {**profile.options, **config.options}
        return config.driver, dict(config.options)
    if profile is not None:
        return profile.driver, {**profile.options, **config.options}
    return DEFAULT_DRIVER, dict(config.options)


def recorded_driver(
    config: NetworkConfig, leases: list[NodeLease]
) -> tuple[str, dict[str, object]]:
    """Return the driver and options that an existing attachment was made with.

    DEL and CHECK use what the lease recorded at confirm, so that a changed
    attach profile applies to new pods only; without a record, the choice
    that ADD would make now.
    """
    for lease in leases:
        if lease.driver:
            return lease.driver, dict(lease.options)
    return choose_driver(config, leases[0] if leases else None)


def _parse_lease(lease: NodeLease) -> tuple[IPInterface, IPAddress | None]:
    try:
        address = ip_interface(lease.address)
        gateway = ip_address(lease.gateway) if lease.gateway else None
    except ValueError as error:
        raise CniError(
            ERR_INTERNAL, f"ipamd returned an unusable lease {lease.address!r}: {error}"
        ) from error
    return address, gateway


def _lease_routes(leases: list[NodeLease]) -> tuple[ResultRoute, ...]:
    """Return the pools' routes; a route without "gw" goes via its family's gateway."""
    routes: list[ResultRoute] = []
    for lease in leases:
        _, gateway = _parse_lease(lease)
        for route in lease.routes:
            try:
                dst = ip_network(route.dst, strict=False)
                via = ip_address(route.gw) if route.gw else None
            except ValueError as error:
                raise CniError(
                    ERR_INTERNAL, f"ipamd returned an unusable route {route.dst!r}: {error}"
                ) from error
            if via is None and gateway is not None and gateway.version == dst.version:
                via = gateway
            routes.append(ResultRoute(dst=str(dst), gateway=via))
    return tuple(routes)


class CniService:
    def __init__(
        self,
        *,
        ipam: IpamClient,
        drivers: DriverSet,
        cluster: str,
        node: str,
        queue: ReleaseQueue,
        journal: AddJournal,
        profiles: ProfileCache,
        attachments: AttachmentRecords | None = None,
    ) -> None:
        self.ipam = ipam
        self.drivers = drivers
        self.cluster = cluster
        self.node = node
        self.queue = queue
        self.journal = journal
        # Without records, DEL requests the driver recorded at ADD from ipamd.
        self.attachments = attachments
        # Attach profiles per network, for a DEL that has no record while ipamd
        # is unavailable.
        self.profiles = profiles
        # The CNI specification forbids parallel calls for one attachment, but
        # a runtime that retries after a timeout may still send them.
        self.locks = KeyedLocks()

    async def handle(self, env: Mapping[str, str], stdin: str) -> CniReply:
        with record_call() as timings, collect_stderr() as plugin_stderr:
            reply = await self._handle(env, stdin)
        stderr = "".join(plugin_stderr) + reply.stderr
        return dataclasses.replace(reply, timings=timings, stderr=stderr)

    async def _handle(self, env: Mapping[str, str], stdin: str) -> CniReply:
        version = version_of(stdin)
        try:
            command = parse_command(env)
            if command is Command.VERSION:
                answer = {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
                return CniReply(json.dumps(answer) + "\n", 0)

            config = parse_network_config(stdin)
            version = config.cni_version
            first = FIRST_VERSION.get(command)
            if first is not None and SUPPORTED_VERSIONS.index(version) < SUPPORTED_VERSIONS.index(
                first
            ):
                raise CniError(
                    ERR_INCOMPATIBLE_VERSION,
                    f"config version does not allow {command.value}: cniVersion is {version}",
                    f"{command.value} needs cniVersion {first} or later",
                )
            cni_env = parse_env(env, command)
            return await self._dispatch(cni_env, config)
        except Exception as exception:
            error = to_cni_error(exception, self.ipam.base_url)
            if error.code == ERR_INTERNAL:
                logger.exception("CNI %s failed", env.get("CNI_COMMAND"))
            else:
                logger.warning(
                    "CNI %s for %s/%s failed with code %d: %s",
                    env.get("CNI_COMMAND"),
                    env.get("CNI_CONTAINERID"),
                    env.get("CNI_IFNAME"),
                    error.code,
                    error.msg,
                )
            return CniReply(error.to_json(version), 1)

    async def _dispatch(self, env: CniEnv, config: NetworkConfig) -> CniReply:
        # Imported here because upkeep imports this module.
        from leasewire.cni import upkeep

        # An executable IPAM plugin; ADD uses it through DelegatedLeases.
        plugin = ipam_plugin(config, env) if env.command is not Command.ADD else None
        if plugin is not None:
            from leasewire.cni import delegated

            return await delegated.dispatch(self, env, config, plugin)
        if env.command is Command.ADD:
            return CniReply(await self.add(env, config), 0)
        if env.command is Command.DEL:
            await self.delete(env, config)
            return CniReply("", 0)
        if env.command is Command.CHECK:
            await self.check(env, config)
            return CniReply("", 0)
        if env.command is Command.GC:
            note = await upkeep.collect_garbage(self, config)
            return CniReply("", 0, note)
        await upkeep.report_status(self, config)
        return CniReply("", 0)

    def owner(self, env: CniEnv) -> Owner:
        return Owner(cluster=self.cluster, containerID=env.container_id, ifname=env.ifname)

    async def add(self, env: CniEnv, config: NetworkConfig) -> str:
        """Lease, attach the pod interface, confirm the lease and return the CNI result."""
        # Fail on a bad configuration before anything is leased or created.
        if config.driver is not None:
            self.drivers.get(config.driver).validate(config.options)
        previous = previous_result(config)
        addresses = requested_addresses(config, env)
        mac = requested_mac(config, env)
        owner = self.owner(env)
        log = owner_logger(owner)
        plugin = ipam_plugin(config, env)
        leaser: LeaseSource = DelegatedLeases(plugin) if plugin is not None else self.ipam

        # The pod's netns is opened once, by the check below, and the driver
        # and apply_extras reuse that socket.
        async with self.locks.hold(owner_key(owner)), sharing_netns():
            # Check the netns and the interface name before asking ipamd, so
            # that these failures leave nothing allocated.
            await ensure_pod_interface_free(env.netns, env.ifname)
            # A release of this owner still queued from an earlier DEL must not
            # hit the lease this ADD gets.
            if self.queue.holds(owner):
                await self.queue.replay(self.ipam, owner)
                if self.queue.holds(owner):
                    raise CniError(
                        ERR_TRY_AGAIN_LATER,
                        "an earlier release of this attachment is still queued for ipamd",
                    )

            # Written before anything is leased, so that a daemon killed from here
            # on releases at its next start what the leasing took. The driver is
            # unknown yet, and no interface exists before the entry names it.
            self.journal.begin(
                AddRecord(
                    owner=owner,
                    network=config.name,
                    netns=env.netns,
                    driver="",
                    options={},
                    plugin=plugin.journal_entry() if plugin is not None else None,
                )
            )
            try:
                leases, created = await leaser.create_leases(
                    LeaseRequest(
                        owner=owner,
                        pod=PodRef(
                            namespace=env.args.get("K8S_POD_NAMESPACE", ""),
                            name=env.args.get("K8S_POD_NAME", ""),
                            uid=env.args.get("K8S_POD_UID", ""),
                        ),
                        node=self.node,
                        network=config.name,
                        pools=config.pools,
                        addresses=tuple(str(address) for address in addresses),
                        mac=mac,
                    )
                )
            except BaseException:
                self.journal.end(owner)
                raise
            log.info(
                "Leased %s (%s)",
                ", ".join(f"{lease.address} from pool {lease.pool}" for lease in leases),
                "new" if created else "existing",
            )

            async with AsyncExitStack() as undo:
                # Runs last: the journal entry goes once the rollback is done.
                undo.callback(self.journal.end, owner)
                # A lease that this owner already held before this call belongs
                # to an earlier ADD; the runtime's DEL releases it, not this rollback.
                rollback = AddRollback(
                    self.ipam,
                    self.attachments,
                    self.queue,
                    owner,
                    config.name,
                    leases,
                    log,
                    leaser=leaser,
                    release=created,
                )
                undo.push_async_callback(rollback.run)

                driver_name, options = choose_driver(config, leases[0])
                driver = self.drivers.get(driver_name)
                driver.validate(options)
                pod_address, gateway = _parse_lease(leases[0])
                more = tuple(_parse_lease(lease) for lease in leases[1:])
                routes = _lease_routes(leases)

                self.journal.begin(
                    AddRecord(
                        owner=owner,
                        network=config.name,
                        netns=env.netns,
                        driver=driver_name,
                        options=options,
                        plugin=plugin.journal_entry() if plugin is not None else None,
                    )
                )
                # Drivers remove what a failed attach created, but the undo
                # does not rely on it: detach counts anything gone as removed.
                # An interface that exists already is left alone, because it
                # may belong to someone else.
                rollback.arm_detach(driver, driver_name, env, options)
                try:
                    with measure("netlink"):
                        attachment = await driver.attach(
                            AttachRequest(
                                container_id=env.container_id,
                                netns=env.netns,
                                ifname=env.ifname,
                                address=pod_address,
                                gateway=gateway,
                                mtu=config.mtu,
                                options=options,
                                mac=mac,
                                extra_addresses=tuple(
                                    PodAddress(address=item, gateway=via) for item, via in more
                                ),
                            )
                        )
                except InterfaceExistsError:
                    rollback.disarm_detach()
                    raise
                new_mac = await apply_extras(
                    env.netns, env.ifname, PodExtras(mac=mac, addresses=more, routes=routes)
                )

                await self._confirm(owner, driver_name, options, leaser)
                if plugin is None:
                    self.profiles.remember(config.name, leases[0].attach)
                # Leases of an IPAM plugin go back through the plugin, whose
                # DEL does not read the record.
                if self.attachments is not None and plugin is None:
                    self.attachments.save(
                        owner,
                        AttachmentRecord(
                            network=config.name,
                            driver=driver_name,
                            options=options,
                            addresses=tuple(lease.address for lease in leases),
                            created_at=tuple(lease.created_at for lease in leases),
                        ),
                    )
                    undo.callback(self.attachments.drop, owner)

                interfaces = list(attachment.interfaces)
                if new_mac is not None:
                    index = attachment.pod_interface
                    interfaces[index] = dataclasses.replace(interfaces[index], mac=new_mac)
                ips = [(pod_address, gateway), *more]
                result = CniResult(
                    interfaces=tuple(interfaces),
                    ips=tuple(
                        ResultIP(address=item, gateway=via, interface=attachment.pod_interface)
                        for item, via in ips
                    ),
                    routes=(
                        *(default_route(via) for _, via in ips if via is not None),
                        *routes,
                    ),
                    dns=_result_dns(config, leases),
                )
                stdout = format_result(result, config.cni_version, previous)
                undo.pop_all()
            self.journal.end(owner)

        log.info("ADD done: %s on %s with driver %s", pod_address, env.ifname, driver_name)
        return stdout

    async def _confirm(
        self, owner: Owner, driver: str, options: dict[str, object], leaser: LeaseSource
    ) -> None:
        try:
            await leaser.confirm_leases(owner, driver, options)
        except IpamRejectedError as error:
            if error.status == 404:
                raise CniError(
                    ERR_TRY_AGAIN_LATER,
                    "the lease expired before the pod was wired; the runtime retries ADD",
                    f"ipamd at {self.ipam.base_url}: {error.code}: {error.message}",
                ) from error
            raise

    async def delete(self, env: CniEnv, config: NetworkConfig) -> None:
        """Detach the pod interface, then release the leases; both may be gone already.

        When ipamd cannot be reached, the interface is still removed and the
        release goes to the durable queue, which the daemon replays later.
        The driver comes from this daemon's attachment record, else from ipamd,
        else from the attach profile that ipamd last returned for the network.
        """
        owner = self.owner(env)
        log = owner_logger(owner)

        async with self.locks.hold(owner_key(owner)):
            record = (
                self.attachments.load(owner, config.name) if self.attachments is not None else None
            )
            if record is not None:
                driver_name, options = record.driver, dict(record.options)
                may_hold_lease = True
            else:
                driver_name, options, may_hold_lease = await self._driver_from_ipamd(
                    owner, config, log
                )

            # A detach failure leaves the lease in place, because the address
            # may still sit on an interface; the runtime retries DEL.
            with measure("netlink"):
                await self.drivers.get(driver_name).detach(
                    DetachRequest(
                        container_id=env.container_id,
                        netns=env.netns,
                        ifname=env.ifname,
                        options=options,
                    )
                )
            if not may_hold_lease and not self.queue.holds(owner):
                log.info("DEL done; no lease was held")
                return
            try:
                await self.ipam.release_leases(owner, network=config.name)
            except IpamUnavailableError as error:
                log.warning("ipamd is unavailable, queueing the release: %s", error)
                # NOTE: without a record, ipamd's createdAt is unknown, so the queued
                # release has no time bound (safe because ADD replays it first).
                created_at = list(record.created_at) if record is not None else []
                await self.queue.add(owner, config.name, created_before=release_bound(created_at))
            else:
                if self.queue.holds(owner):
                    await self.queue.replay(self.ipam, owner)
            if self.attachments is not None:
                self.attachments.drop(owner)
        log.info("DEL done")

    async def _driver_from_ipamd(
        self, owner: Owner, config: NetworkConfig, log: OwnerLogger
    ) -> tuple[str, dict[str, object], bool]:
        """Return the driver and options recorded with the leases, and whether a lease may be held.

        When ipamd is unavailable, the choice that ADD makes, with the attach
        profile that ipamd last returned for the network, and True.
        """
        try:
            leases = await self.ipam.find_leases(owner, config.name)
        except IpamUnavailableError as error:
            profile = self.profiles.recall(config.name)
            driver_name, options = driver_for_profile(config, profile)
            if config.driver is not None:
                source = "the configuration"
            elif profile is not None:
                name = f" {profile.profile!r}" if profile.profile else ""
                source = f"the attach profile{name} that ipamd last returned for this network"
            else:
                source = "the default"
            log.warning(
                "Cannot read the lease's driver from ipamd, detaching with driver %s of %s: %s",
                driver_name,
                source,
                error,
            )
            return driver_name, options, True
        driver_name, options = recorded_driver(config, leases)
        return driver_name, options, bool(leases)

    async def check(self, env: CniEnv, config: NetworkConfig) -> None:
        """Verify that ipamd holds the lease and the pod's interface, addresses and routes."""
        previous = previous_address(config, env.ifname, env.netns)
        owner = self.owner(env)

        leases = await self.ipam.find_leases(owner, config.name)
        if not leases:
            raise CniError(
                ERR_CHECK_FAILED, f"ipamd has no lease for {env.container_id}/{env.ifname}"
            )
        if all(ip_interface(lease.address) != previous.address for lease in leases):
            held = ", ".join(lease.address for lease in leases)
            raise CniError(
                ERR_CHECK_FAILED,
                f"ipamd leases {held} but prevResult has {previous.address}",
            )
        driver_name, options = recorded_driver(config, leases)
        await self.check_wiring(env, previous, driver_name, options)

    async def check_wiring(
        self,
        env: CniEnv,
        previous: PreviousAddress,
        driver_name: str,
        options: dict[str, object],
    ) -> None:
        """Check the pod's interface with its driver, then its MAC and routes."""
        with measure("netlink"):
            await self.drivers.get(driver_name).check(
                CheckRequest(
                    container_id=env.container_id,
                    netns=env.netns,
                    ifname=env.ifname,
                    address=previous.address,
                    gateway=previous.gateway,
                    options=options,
                )
            )
        await check_pod(env.netns, env.ifname, previous.mac, previous.routes)


def _result_dns(config: NetworkConfig, leases: list[NodeLease]) -> dict[str, object]:
    """Return the result's DNS: a non-empty "dns" of the configuration replaces the pool's."""
    configured = config.raw.get("dns")
    if isinstance(configured, dict) and any(configured.values()):
        return dict(configured)
    for lease in leases:
        if any(lease.dns.values()):
            return dict(lease.dns)
    return {}


def owner_key(owner: Owner) -> OwnerKey:
    return (owner.cluster, owner.container_id, owner.ifname)
