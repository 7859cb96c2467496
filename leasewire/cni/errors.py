"""Map the exceptions of ipamd's client, the drivers and the registry to CNI errors."""

from __future__ import annotations

from leasewire.cni.cniconfig import (
    ERR_ATTACH_FAILED,
    ERR_CHECK_FAILED,
    ERR_DEVICE_IN_USE,
    ERR_INTERFACE_EXISTS,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_LEASE_REJECTED,
    ERR_NETNS_NOT_FOUND,
    ERR_TRY_AGAIN_LATER,
    ERR_UNSUPPORTED_FIELD,
    CniError,
)
from leasewire.cni.ipamclient import IpamRejectedError, IpamUnavailableError
from leasewire.drivers.base import (
    CheckFailedError,
    DeviceInUseError,
    DriverError,
    InterfaceExistsError,
    InvalidOptionError,
    NamespaceNotFoundError,
)
from leasewire.drivers.registry import UnknownDriverError

# ipamd error codes that mean the network configuration or the request is wrong,
# not that the pool is short of addresses.
CONFIG_ERROR_CODES = frozenset({"pool_not_found", "invalid_request"})


def to_cni_error(error: Exception, ipamd: str) -> CniError:
    """Map an exception from ipamd, a driver or the registry to a CNI error."""
    if isinstance(error, CniError):
        return error
    if isinstance(error, IpamUnavailableError):
        return CniError(ERR_TRY_AGAIN_LATER, str(error), "the runtime retries the call later")
    if isinstance(error, IpamRejectedError):
        code = ERR_INVALID_CONFIG if error.code in CONFIG_ERROR_CODES else ERR_LEASE_REJECTED
        return CniError(code, error.message, f"ipamd at {ipamd}: HTTP {error.status} {error.code}")
    if isinstance(error, InvalidOptionError):
        # A missing value is an invalid configuration; a value the driver does
        # not support is an unsupported field, whose message names key and value.
        code = ERR_INVALID_CONFIG if error.value is None else ERR_UNSUPPORTED_FIELD
        return CniError(code, str(error))
    if isinstance(error, UnknownDriverError):
        return CniError(ERR_INVALID_CONFIG, str(error))
    if isinstance(error, NamespaceNotFoundError):
        return CniError(ERR_NETNS_NOT_FOUND, str(error))
    if isinstance(error, InterfaceExistsError):
        return CniError(ERR_INTERFACE_EXISTS, str(error))
    if isinstance(error, CheckFailedError):
        return CniError(ERR_CHECK_FAILED, str(error))
    if isinstance(error, DeviceInUseError):
        message = str(error)
        if error.holder not in message:
            message = f"{message} (held by {error.holder})"
        return CniError(
            ERR_DEVICE_IN_USE, message, "detach the holder first or request another device"
        )
    if isinstance(error, DriverError):
        return CniError(ERR_ATTACH_FAILED, str(error))
    return CniError(ERR_INTERNAL, f"internal error: {error!r}", "see the node daemon's log")
