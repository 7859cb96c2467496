"""The attach driver interface: what every driver takes, returns and raises.

A driver wires one pod interface (``attach``), removes it again (``detach``)
and verifies it (``check``). The node daemon leases the address before it
calls ``attach`` and releases it after ``detach``, so drivers never talk to
ipamd. Each call gets a typed request, and failures are raised as
``DriverError`` subclasses that the node daemon maps to CNI error codes.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import ClassVar

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface


class DriverError(Exception):
    """Failure of a driver operation; the message names the object and the cause."""


class InvalidOptionError(DriverError):
    """A driver option in the network configuration has an unusable value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"invalid value {value!r} for {key!r}: {reason}")
        self.key = key
        self.value = value


class NamespaceNotFoundError(DriverError):
    """The network namespace path does not exist or is not a network namespace."""


class InterfaceExistsError(DriverError):
    """An interface that the driver has to create already exists."""


class CheckFailedError(DriverError):
    """The live state of an attachment differs from what attach created."""


class DeviceInUseError(DriverError):
    """A device that attach has to take is already held by another attachment."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True, kw_only=True)
class PodAddress:
    """One leased address of a pod interface and the gateway of its pool."""

    # Leased address with the pool's prefix length, e.g. 10.0.0.5/24.
    address: IPInterface
    # Pool gateway; None when the pool has none, so no default route is set.
    gateway: IPAddress | None


@dataclass(frozen=True, kw_only=True)
class AttachRequest:
    """Everything a driver needs to wire one pod interface."""

    container_id: str
    # Path of the pod's network namespace, exactly as the runtime passed it.
    netns: str
    # Name of the interface to create inside the pod (CNI_IFNAME).
    ifname: str
    # Leased address with the pool's prefix length, e.g. 10.0.0.5/24.
    address: IPInterface
    # Pool gateway; None when the pool has none, so no default route is set.
    gateway: IPAddress | None
    # MTU of the pod interface, in bytes.
    mtu: int
    # Driver-specific keys of the network configuration; unknown keys are ignored.
    options: Mapping[str, object]
    # MAC address the runtime requests for the pod interface, or None for any.
    mac: str | None = None
    # Further leases of the same interface, e.g. the IPv6 lease of a dual-stack
    # pod, at most one per IP family besides ``address``.
    extra_addresses: tuple[PodAddress, ...] = ()

    def addresses(self) -> tuple[PodAddress, ...]:
        """Return every leased address of the interface, ``address`` first."""
        return (PodAddress(address=self.address, gateway=self.gateway), *self.extra_addresses)


@dataclass(frozen=True, kw_only=True)
class DetachRequest:
    """Identifies an attachment to remove; the netns may be gone or empty."""

    container_id: str
    # Empty when the runtime no longer has the netns (allowed for DEL).
    netns: str
    ifname: str
    options: Mapping[str, object]


@dataclass(frozen=True, kw_only=True)
class CheckRequest:
    """An attachment as ADD returned it, to compare with the live state."""

    container_id: str
    netns: str
    ifname: str
    address: IPInterface
    gateway: IPAddress | None
    options: Mapping[str, object]
    extra_addresses: tuple[PodAddress, ...] = ()

    def addresses(self) -> tuple[PodAddress, ...]:
        """Return every address the attachment should have, ``address`` first."""
        return (PodAddress(address=self.address, gateway=self.gateway), *self.extra_addresses)


@dataclass(frozen=True, kw_only=True)
class AttachedInterface:
    """One interface that attach created or uses, as the CNI result lists it."""

    name: str
    # Colon-separated lower-case hex MAC address.
    mac: str
    # Netns path for an interface inside the pod, None for a host interface.
    sandbox: str | None = None
    # PCI address of the device behind the interface (SR-IOV VF), shown in CNI 1.1 results.
    pci_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """Result of attach: the interfaces in CNI result order and which one is the pod's."""

    interfaces: tuple[AttachedInterface, ...]
    # Index into ``interfaces`` of the pod interface that carries the address.
    pod_interface: int


class Driver(abc.ABC):
    """An attach driver. One instance serves every request of a node daemon,
    so an implementation keeps only shared state (such as locks) on itself."""

    name: ClassVar[str]

    def validate(self, options: Mapping[str, object]) -> None:  # noqa: B027
        """Raise InvalidOptionError when the options cannot be used.

        The node daemon calls this before it leases an address, so a bad
        configuration fails without touching ipamd. The default accepts anything.
        """

    @abc.abstractmethod
    async def attach(self, request: AttachRequest) -> Attachment:
        """Create and configure the pod interface. On failure, remove whatever
        this call created before raising."""

    @abc.abstractmethod
    async def detach(self, request: DetachRequest) -> None:
        """Remove what attach created. Anything already gone counts as removed."""

    @abc.abstractmethod
    async def check(self, request: CheckRequest) -> None:
        """Raise CheckFailedError when the attachment is missing or differs."""


def interface_name_problem(name: str) -> str | None:
    """Return why ``name`` cannot be a Linux interface name, or None when it can.

    The kernel limits names to 15 bytes and rejects "/", ":" and white space,
    and "." and ".." clash with sysfs entries.
    """
    if not name:
        return "it is empty"
    if len(name.encode()) > 15:
        return "it is longer than 15 bytes"
    if name in (".", ".."):
        return "'.' and '..' are reserved"
    if any(char in "/:" or char.isspace() for char in name):
        return "it contains '/', ':' or white space"
    return None
