"""ORM models of ipamd: pools and leases.

The schema itself is created by the Alembic revisions in
``leasewire.migrations``. These models must match them, which a unit test
checks with Alembic's autogenerate comparison.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from leasewire.api import LeaseState
from leasewire.ipamd.addresses import IPVersion

HELD_STATES = (LeaseState.PENDING, LeaseState.BOUND)
# Written as literal SQL, identical in the partial indexes and in the queries,
# because SQLite uses a partial index only when the query's WHERE clause
# contains the index's WHERE term itself, and a bound parameter never matches it.
HELD_SQL = "state IN ('pending', 'bound')"
# A lease blocks its address while held and, once released, until its cooldown
# ends (the background task then sets cooldown_until to NULL).
BLOCKING_SQL = "(state IN ('pending', 'bound') OR cooldown_until IS NOT NULL)"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timezone type and returns naive values, PostgreSQL returns
    aware ones; this type makes both return aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"timestamp {value} has no timezone; pass an aware datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Pool(Base):
    """An address pool: one CIDR, optional ranges inside it, excluded addresses and a gateway.

    ``ranges`` is a list of ``[start, end]`` pairs and ``excludes`` a list of
    addresses, CIDRs or ``start-end`` ranges, all in canonical text form.
    ``cursor`` is the storage key of the address where the next search starts.
    It is only a hint: a stale value costs a longer search, never a wrong lease.
    """

    __tablename__ = "pool"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    ip_version: Mapped[int] = mapped_column(SmallInteger)
    cidr: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64))
    ranges: Mapped[list[list[str]]] = mapped_column(JSON)
    excludes: Mapped[list[str]] = mapped_column(JSON)
    cursor: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    routes: Mapped[list[dict[str, str]]] = mapped_column(JSON, server_default="[]")
    dns: Mapped[dict[str, list[str]]] = mapped_column(JSON, server_default="{}")
    cooldown_seconds: Mapped[int] = mapped_column(Integer, server_default="30")
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    selectors: Mapped[dict[str, dict[str, str]]] = mapped_column(JSON, server_default="{}")
    cluster: Mapped[str | None] = mapped_column(String(253))
    vlan: Mapped[int | None] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer, server_default="1")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def version(self) -> IPVersion:
        return 4 if self.ip_version == 4 else 6


class Lease(Base):
    """An address given to one owner (cluster, container id, ifname) out of one pool.

    A released lease stays as a row for the record until the retention period
    ends. Held leases (pending, bound) count against the pool; they and released
    leases in their cooldown block their address, which the partial unique
    index on (pool_id, address) enforces. One owner holds at most one lease per pool.
    """

    __tablename__ = "lease"
    __table_args__ = (
        Index(
            "uq_lease_pool_address_blocking",
            "pool_id",
            "address",
            unique=True,
            sqlite_where=text(BLOCKING_SQL),
            postgresql_where=text(BLOCKING_SQL),
        ),
        Index(
            "uq_lease_pool_owner_held",
            "pool_id",
            "cluster",
            "container_id",
            "ifname",
            unique=True,
            sqlite_where=text(HELD_SQL),
            postgresql_where=text(HELD_SQL),
        ),
        Index("ix_lease_owner", "cluster", "container_id", "ifname"),
        Index("ix_lease_node", "node"),
        Index("ix_lease_cluster_pod_uid", "cluster", "pod_uid"),
        Index("ix_lease_expires_at", "expires_at"),
        Index("ix_lease_cooldown_until", "cooldown_until"),
        Index("ix_lease_released_at", "released_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"))
    address: Mapped[bytes] = mapped_column(LargeBinary(16))
    state: Mapped[LeaseState] = mapped_column(
        Enum(
            LeaseState,
            name="lease_state",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda states: [state.value for state in states],
        )
    )
    cluster: Mapped[str] = mapped_column(String(253))
    container_id: Mapped[str] = mapped_column(String(255))
    ifname: Mapped[str] = mapped_column(String(64))
    pod_namespace: Mapped[str] = mapped_column(String(253), default="")
    pod_name: Mapped[str] = mapped_column(String(253), default="")
    pod_uid: Mapped[str] = mapped_column(String(64), default="")
    node: Mapped[str] = mapped_column(String(253), default="")
    driver: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    bound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    network: Mapped[str] = mapped_column(String(253), default="", server_default="")
    mac: Mapped[str | None] = mapped_column(String(64))
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # Every lease view needs its pool's name, prefix length and gateway, and a
    # lazy load would run hidden IO under asyncio, so the pool is always joined.
    pool: Mapped[Pool] = relationship(lazy="joined", innerjoin=True)
