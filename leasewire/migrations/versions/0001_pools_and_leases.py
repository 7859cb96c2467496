"""Create the pool and lease tables.

Revision ID: 0001
Revises: none (first revision)

Creates ``pool`` (name, CIDR, ranges, excludes, gateway, next-fit cursor) and
``lease`` (pool, address as 16 bytes, state, owner, pod, node, driver and
timestamps). Two partial unique indexes make the database, not ipamd, the
judge of uniqueness among held leases (state pending or bound): one address
per pool, and one lease per owner per pool. Several ipamd replicas on one
PostgreSQL database therefore never hand out an address twice. Both SQLite
(3.8 and later) and PostgreSQL support partial indexes.

Running the upgrade twice is safe: Alembic records the revision in
``alembic_version`` and skips it the second time, and the whole revision runs
in one transaction, so a failure leaves no half-created table.

The downgrade drops both tables, and with them every pool and lease. There is
no earlier schema to go back to, so nothing can be kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Same text as the queries use, so that SQLite can match the partial indexes.
HELD = "state IN ('pending', 'bound')"


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "pool",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("ip_version", sa.SmallInteger(), nullable=False),
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=True),
        sa.Column("ranges", sa.JSON(), nullable=False),
        sa.Column("excludes", sa.JSON(), nullable=False),
        sa.Column("cursor", sa.LargeBinary(16), nullable=True),
        sa.Column("created_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pool"),
        sa.UniqueConstraint("name", name="uq_pool_name"),
    )
    op.create_table(
        "lease",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.LargeBinary(16), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "bound",
                "released",
                name="lease_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("cluster", sa.String(253), nullable=False),
        sa.Column("container_id", sa.String(255), nullable=False),
        sa.Column("ifname", sa.String(64), nullable=False),
        sa.Column("pod_namespace", sa.String(253), nullable=False),
        sa.Column("pod_name", sa.String(253), nullable=False),
        sa.Column("pod_uid", sa.String(64), nullable=False),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("driver", sa.String(64), nullable=True),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("bound_at", timestamp, nullable=True),
        sa.Column("released_at", timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_lease"),
        sa.ForeignKeyConstraint(
            ["pool_id"], ["pool.id"], name="fk_lease_pool_id_pool", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "uq_lease_pool_address_held",
        "lease",
        ["pool_id", "address"],
        unique=True,
        sqlite_where=sa.text(HELD),
        postgresql_where=sa.text(HELD),
    )
    op.create_index(
        "uq_lease_pool_owner_held",
        "lease",
        ["pool_id", "cluster", "container_id", "ifname"],
        unique=True,
        sqlite_where=sa.text(HELD),
        postgresql_where=sa.text(HELD),
    )
    op.create_index("ix_lease_owner", "lease", ["cluster", "container_id", "ifname"])
    op.create_index("ix_lease_node", "lease", ["node"])


def downgrade() -> None:
    op.drop_table("lease")
    op.drop_table("pool")
