"""DEL, CHECK, GC and STATUS of a network whose addresses come from an
executable IPAM plugin (see ``delegate``): the attach driver works as with
ipamd, and the plugin gets the same verb with the complete configuration.
An error of the plugin is the call's error.
"""

from __future__ import annotations

import logging

from leasewire.cni.cniconfig import CniEnv, Command, NetworkConfig
from leasewire.cni.cniresult import previous_address
from leasewire.cni.delegate import IpamPlugin
from leasewire.cni.timings import measure
from leasewire.cni.verbs import CniReply, CniService, choose_driver, owner_key, owner_logger
from leasewire.drivers.base import DetachRequest

logger = logging.getLogger(__name__)


async def dispatch(
    service: CniService, env: CniEnv, config: NetworkConfig, plugin: IpamPlugin
) -> CniReply:
    """Serve every verb but ADD, which runs the common ADD path with DelegatedLeases."""
    if env.command is Command.DEL:
        await delete(service, env, config, plugin)
    elif env.command is Command.CHECK:
        await check(service, env, config, plugin)
    else:
        # GC and STATUS: the plugin owns every allocation of the network, and
        # the runtime DELs stale attachments before it sends GC.
        await plugin.run(env.command)
    return CniReply("", 0)


async def delete(
    service: CniService, env: CniEnv, config: NetworkConfig, plugin: IpamPlugin
) -> None:
    """Detach the pod interface, then let the plugin release the addresses."""
    owner = service.owner(env)
    log = owner_logger(owner)
    driver_name, options = choose_driver(config, None)
    async with service.locks.hold(owner_key(owner)):
        # A detach failure keeps the allocation, because the address may still
        # sit on an interface; the runtime retries DEL.
        with measure("netlink"):
            await service.drivers.get(driver_name).detach(
                DetachRequest(
                    container_id=env.container_id,
                    netns=env.netns,
                    ifname=env.ifname,
                    options=options,
                )
            )
        await plugin.run(Command.DEL)
    log.info("DEL done, IPAM plugin %r released the addresses", plugin.type)


async def check(
    service: CniService, env: CniEnv, config: NetworkConfig, plugin: IpamPlugin
) -> None:
    """Let the plugin check its allocation, then check the interface, address and routes."""
    previous = previous_address(config, env.ifname, env.netns)
    await plugin.run(Command.CHECK)
    driver_name, options = choose_driver(config, None)
    await service.check_wiring(env, previous, driver_name, options)
