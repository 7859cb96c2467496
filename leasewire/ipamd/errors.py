"""Domain errors of ipamd, each with a stable code and an HTTP status.

The error middleware turns any of these into a JSON body ``{code, message,
details?}``. Clients branch on ``code``, never on the message text, so a code
never changes once released. The message names the offending value and what
to do next.
"""

from __future__ import annotations

from typing import ClassVar


class IpamError(Exception):
    """Base of every error that ipamd returns to a client on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(IpamError):
    """The request body or query does not match the API contract."""

    status = 422
    code = "invalid_request"


class InvalidPool(IpamError):
    """A pool spec that cannot be served: bad CIDR, gateway or range, or no usable address."""

    status = 422
    code = "invalid_pool"

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(
            f"invalid pool field {field} = {value!r}: {reason}",
            {"field": field, "value": value},
        )
        self.field = field
        self.value = value


class PoolNotFound(IpamError):
    status = 404
    code = "pool_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"pool {name!r} not found; check the name, or create it with POST /v1/pools "
            "('leasewire pool create')",
            {"pool": name},
        )


class PoolExists(IpamError):
    status = 409
    code = "pool_exists"


class PoolInUse(IpamError):
    status = 409
    code = "pool_in_use"


class PoolExhausted(IpamError):
    status = 409
    code = "pool_exhausted"


class AddressTaken(IpamError):
    status = 409
    code = "address_taken"


class AddressNotAllocatable(IpamError):
    status = 422
    code = "address_not_allocatable"


class OwnerHoldsOtherAddress(IpamError):
    """The owner already holds a lease in the pool, on another address than the one requested."""

    status = 409
    code = "owner_holds_other_address"


class AllocationConflict(IpamError):
    """Other writers took every candidate address that this request tried; the client may retry."""

    status = 503
    code = "allocation_conflict"


class LeaseNotFound(IpamError):
    status = 404
    code = "lease_not_found"


class FieldImmutable(IpamError):
    """A pool update tries to change a field that existing leases depend on (the CIDR)."""

    status = 409
    code = "field_immutable"


class PoolShrinkConflict(IpamError):
    """A pool update would leave held or cooling leases outside the pool's usable addresses."""

    status = 409
    code = "pool_shrink_conflict"


class PoolOverlap(IpamError):
    """A pool's ranges overlap the ranges of another pool that the same cluster can use."""

    status = 422
    code = "pool_overlap"


class PoolNotInScope(IpamError):
    """The named pool belongs to another cluster than the lease's owner."""

    status = 422
    code = "pool_not_in_scope"


class NoPoolAvailable(IpamError):
    """Pool selection found no pool that matches the request and has a free address."""

    status = 409
    code = "no_pool_available"


class DatabaseUnavailable(IpamError):
    """The database did not answer; nothing was written. The client retries after Retry-After."""

    status = 503
    code = "database_unavailable"
