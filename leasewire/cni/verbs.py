"""The CNI verbs as the node daemon runs them: lease from ipamd, then let the
attach driver wire the pod, and undo both on failure.

``CniService.handle`` takes the CNI environment and the network configuration
text and returns what the shim prints and the exit code it returns. Every
failure becomes a CNI error object; nothing is raised to the HTTP layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Hashable, Mapping, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface
from typing import Any

from leasewire.api import LeaseCreate, Owner, PodRef
from leasewire.cni.cniconfig import (
    ERR_ATTACH_FAILED,
    ERR_CHECK_FAILED,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERFACE_EXISTS,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_LEASE_REJECTED,
    ERR_NETNS_NOT_FOUND,
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
    requested_address,
    version_of,
)
from leasewire.cni.cniresult import (
    CniResult,
    ResultIP,
    default_route,
    format_result,
    previous_address,
)
from leasewire.cni.ipamclient import IpamClient, IpamRejectedError, IpamUnavailableError
from leasewire.drivers.base import (
    AttachRequest,
    CheckFailedError,
    CheckRequest,
    DetachRequest,
    Driver,
    DriverError,
    InterfaceExistsError,
    InvalidOptionError,
    NamespaceNotFoundError,
)
from leasewire.drivers.netlink import find_link, is_own_netns, open_netns
from leasewire.drivers.registry import DriverSet, UnknownDriverError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CniReply:
    """Output of one CNI call: the shim's stdout and stderr, and its exit code."""

    stdout: str
    exit_code: int
    stderr: str = ""


class OwnerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the attachment's owner key."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['owner'] if self.extra else '?'}] {msg}", kwargs


class KeyedLocks:
    """One asyncio lock per key, dropped once no task holds or waits for it."""

    def __init__(self) -> None:
        # key -> (lock, [number of holders and waiters])
        self._entries: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._entries.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._entries[key]


def to_cni_error(error: Exception, ipamd: str) -> CniError:
    """Map an exception from ipamd, a driver or the registry to a CNI error."""
    if isinstance(error, CniError):
        return error
    if isinstance(error, IpamUnavailableError):
        return CniError(ERR_TRY_AGAIN_LATER, str(error), "the runtime retries the call later")
    if isinstance(error, IpamRejectedError):
        # A pool name that ipamd does not know is a configuration error.
        code = ERR_INVALID_CONFIG if error.code == "pool_not_found" else ERR_LEASE_REJECTED
        return CniError(code, error.message, f"ipamd at {ipamd}: HTTP {error.status} {error.code}")
    if isinstance(error, UnknownDriverError | InvalidOptionError):
        return CniError(ERR_INVALID_CONFIG, str(error))
    if isinstance(error, NamespaceNotFoundError):
        return CniError(ERR_NETNS_NOT_FOUND, str(error))
    if isinstance(error, InterfaceExistsError):
        return CniError(ERR_INTERFACE_EXISTS, str(error))
    if isinstance(error, CheckFailedError):
        return CniError(ERR_CHECK_FAILED, str(error))
    if isinstance(error, DriverError):
        return CniError(ERR_ATTACH_FAILED, str(error))
    return CniError(ERR_INTERNAL, f"internal error: {error!r}", "see the node daemon's log")


class CniService:
    def __init__(self, *, ipam: IpamClient, drivers: DriverSet, cluster: str, node: str) -> None:
        self._ipam = ipam
        self._drivers = drivers
        self._cluster = cluster
        self._node = node
        # The CNI specification forbids parallel calls for one attachment, but
        # a runtime that retries after a timeout may still send them.
        self._locks = KeyedLocks()

    async def handle(self, env: Mapping[str, str], stdin: str) -> CniReply:
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
                    f"config version {version} does not allow {command.value}",
                    f"{command.value} needs cniVersion {first} or later",
                )
            cni_env = parse_env(env, command)
            return await self._dispatch(cni_env, config)
        except Exception as exception:
            error = to_cni_error(exception, self._ipam.base_url)
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
        if env.command is Command.ADD:
            return CniReply(await self.add(env, config), 0)
        if env.command is Command.DEL:
            await self.delete(env, config)
            return CniReply("", 0)
        if env.command is Command.CHECK:
            await self.check(env, config)
            return CniReply("", 0)
        if env.command is Command.GC:
            # NOTE: GC is not implemented yet, so stale leases stay until DEL or
            # the operator releases them. Success keeps runtimes' GC loops going.
            logger.warning("CNI GC for network %s ignored: not implemented yet", config.name)
            return CniReply("", 0, "leasewire: GC is not implemented yet; nothing was released\n")
        # STATUS: this daemon is up and serving requests.
        # TODO: report 50 when ipamd is unreachable or the pool is exhausted.
        return CniReply("", 0)

    def _owner(self, env: CniEnv) -> Owner:
        return Owner(cluster=self._cluster, containerID=env.container_id, ifname=env.ifname)

    def _logger(self, owner: Owner) -> OwnerLogger:
        key = f"{owner.cluster}/{owner.container_id}/{owner.ifname}"
        return OwnerLogger(logger, {"owner": key})

    async def add(self, env: CniEnv, config: NetworkConfig) -> str:
        """Lease an address, attach the pod interface and return the CNI result."""
        if config.pool is None:
            raise CniError(ERR_INVALID_CONFIG, "missing 'pool': name the ipamd pool to lease from")
        driver = self._drivers.get(config.driver)
        driver.validate(config.options)
        address = requested_address(config, env)
        owner = self._owner(env)
        log = self._logger(owner)

        async with self._locks.hold(_owner_key(owner)):
            # Check the netns and the interface name before asking ipamd, so
            # that these failures leave nothing allocated.
            await _ensure_pod_interface_free(env.netns, env.ifname)

            lease, created = await self._ipam.create_lease(
                LeaseCreate(
                    pool=config.pool,
                    owner=owner,
                    pod=PodRef(
                        namespace=env.args.get("K8S_POD_NAMESPACE", ""),
                        name=env.args.get("K8S_POD_NAME", ""),
                        uid=env.args.get("K8S_POD_UID", ""),
                    ),
                    node=self._node,
                    address=str(address) if address is not None else None,
                )
            )
            log.info(
                "Leased %s from pool %s (%s)",
                lease.address,
                lease.pool,
                "new" if created else "existing",
            )

            async with AsyncExitStack() as undo:
                # A lease that this owner already held before this call belongs
                # to an earlier ADD; the runtime's DEL releases it, not this rollback.
                if created:
                    undo.push_async_callback(self._release_after_failure, owner, log)

                try:
                    pod_address = ip_interface(lease.address)
                    gateway = ip_address(lease.gateway) if lease.gateway else None
                except ValueError as error:
                    raise CniError(
                        ERR_INTERNAL, f"ipamd returned an unusable lease {lease.address!r}: {error}"
                    ) from error

                attachment = await driver.attach(
                    AttachRequest(
                        container_id=env.container_id,
                        netns=env.netns,
                        ifname=env.ifname,
                        address=pod_address,
                        gateway=gateway,
                        mtu=config.mtu,
                        options=config.options,
                    )
                )
                undo.push_async_callback(self._detach_after_failure, driver, env, config, log)

                result = CniResult(
                    interfaces=attachment.interfaces,
                    ips=(
                        ResultIP(
                            address=pod_address,
                            gateway=gateway,
                            interface=attachment.pod_interface,
                        ),
                    ),
                    routes=(default_route(gateway),) if gateway is not None else (),
                )
                stdout = format_result(result, config.cni_version)
                undo.pop_all()

        log.info("ADD done: %s on %s", lease.address, env.ifname)
        return stdout

    async def delete(self, env: CniEnv, config: NetworkConfig) -> None:
        """Detach the pod interface, then release the lease; both may be gone already."""
        driver = self._drivers.get(config.driver)
        owner = self._owner(env)
        log = self._logger(owner)

        async with self._locks.hold(_owner_key(owner)):
            # A detach failure leaves the lease in place, because the address
            # may still sit on an interface; the runtime retries DEL.
            await driver.detach(
                DetachRequest(
                    container_id=env.container_id,
                    netns=env.netns,
                    ifname=env.ifname,
                    options=config.options,
                )
            )
            # NOTE: when ipamd is unreachable this returns "try again later" and
            # relies on the runtime retrying DEL; a durable local release queue
            # that the daemon replays is still to be written.
            await self._ipam.release_lease(owner)
        log.info("DEL done")

    async def check(self, env: CniEnv, config: NetworkConfig) -> None:
        """Verify that ipamd holds the lease and the driver's interfaces are intact."""
        if config.pool is None:
            raise CniError(ERR_INVALID_CONFIG, "missing 'pool': name the ipamd pool to lease from")
        previous = previous_address(config, env.ifname, env.netns)
        driver = self._drivers.get(config.driver)
        owner = self._owner(env)

        lease = await self._ipam.find_lease(pool=config.pool, node=self._node, owner=owner)
        if lease is None:
            raise CniError(
                ERR_CHECK_FAILED, f"ipamd has no lease in pool {config.pool!r} for {env.ifname!r}"
            )
        if ip_interface(lease.address) != previous.address:
            raise CniError(
                ERR_CHECK_FAILED,
                f"ipamd leases {lease.address} but prevResult has {previous.address}",
            )
        await driver.check(
            CheckRequest(
                container_id=env.container_id,
                netns=env.netns,
                ifname=env.ifname,
                address=previous.address,
                gateway=previous.gateway,
                options=config.options,
            )
        )

    async def _release_after_failure(self, owner: Owner, log: OwnerLogger) -> None:
        try:
            await self._ipam.release_lease(owner)
            log.info("Rolled back: lease released")
        except (IpamUnavailableError, IpamRejectedError):
            log.exception("Failed to release the lease while rolling back ADD; DEL releases it")

    async def _detach_after_failure(
        self, driver: Driver, env: CniEnv, config: NetworkConfig, log: OwnerLogger
    ) -> None:
        request = DetachRequest(
            container_id=env.container_id,
            netns=env.netns,
            ifname=env.ifname,
            options=config.options,
        )
        try:
            await driver.detach(request)
            log.info("Rolled back: interface detached")
        except DriverError:
            log.exception("Failed to detach while rolling back ADD; DEL detaches it")


async def _ensure_pod_interface_free(netns: str, ifname: str) -> None:
    """Raise unless ``netns`` is another network namespace without ``ifname``."""
    if is_own_netns(netns):
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_NETNS {netns!r} is the node daemon's own network namespace, not a pod's",
        )
    async with open_netns(netns) as pod:
        if await find_link(pod, ifname) is not None:
            raise InterfaceExistsError(f"interface {ifname!r} already exists in {netns!r}")


def _owner_key(owner: Owner) -> tuple[str, str, str]:
    return (owner.cluster, owner.container_id, owner.ifname)
