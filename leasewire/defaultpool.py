"""The default pool of the all-in-one daemon, checked before anything starts.

Standard library only, so that ``leasewire demo`` can check ``--pool-cidr``
without importing the daemons.
"""

from __future__ import annotations

import ipaddress


def default_pool_spec(name: str, cidr: str) -> dict[str, object]:
    """Build the default pool: the whole CIDR, with its first address as gateway."""
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError as error:
        raise ValueError(f"invalid --pool-cidr {cidr!r}: {error}") from None
    if network.num_addresses < 4:
        raise ValueError(
            f"--pool-cidr {cidr!r} is too small for a pool with a gateway: use a /30 or larger"
        )
    return {"name": name, "cidr": str(network), "gateway": str(network.network_address + 1)}
