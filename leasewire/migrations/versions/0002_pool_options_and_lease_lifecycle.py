"""Add pool options (routes, DNS, cooldown, priority, selectors, scope, VLAN) and lease lifecycle.

Revision ID: 0002
Revises: 0001

Pool gains routes, DNS, the release cooldown in seconds, a priority and
selectors for pool selection, a cluster scope (NULL: shared by all clusters),
a VLAN id and a generation that grows by one with every change.

Lease gains the expiry of a pending lease, the end of a released lease's
cooldown, the CNI network name, the MAC address and the driver options
recorded at confirm. A released lease keeps blocking its address while
``cooldown_until`` is set, so the unique index on a pool's addresses now
covers held leases and cooling released ones. The background task in ipamd
clears ``cooldown_until`` once it has passed, which frees the address.

Existing rows get the column defaults: existing pools a 30 s cooldown and
priority 0, existing leases no expiry (they were created bound).

Running the upgrade twice is safe, because Alembic records the revision.
The downgrade drops the new columns and indexes and restores the old address
index. Any released lease in its cooldown then frees its address at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Same text as the queries use, so that SQLite can match the partial indexes.
HELD = "state IN ('pending', 'bound')"
BLOCKING = "(state IN ('pending', 'bound') OR cooldown_until IS NOT NULL)"


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    with op.batch_alter_table("pool") as batch:
        batch.add_column(sa.Column("routes", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("dns", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("cooldown_seconds", sa.Integer(), nullable=False, server_default="30")
        )
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("selectors", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("cluster", sa.String(253), nullable=True))
        batch.add_column(sa.Column("vlan", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("updated_at", timestamp, nullable=True))

    with op.batch_alter_table("lease") as batch:
        batch.add_column(sa.Column("expires_at", timestamp, nullable=True))
        batch.add_column(sa.Column("cooldown_until", timestamp, nullable=True))
        batch.add_column(sa.Column("network", sa.String(253), nullable=False, server_default=""))
        batch.add_column(sa.Column("mac", sa.String(64), nullable=True))
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))

    op.drop_index("uq_lease_pool_address_held", table_name="lease")
    op.create_index(
        "uq_lease_pool_address_blocking",
        "lease",
        ["pool_id", "address"],
        unique=True,
        sqlite_where=sa.text(BLOCKING),
        postgresql_where=sa.text(BLOCKING),
    )
    op.create_index("ix_lease_cluster_pod_uid", "lease", ["cluster", "pod_uid"])
    op.create_index("ix_lease_expires_at", "lease", ["expires_at"])
    op.create_index("ix_lease_cooldown_until", "lease", ["cooldown_until"])
    op.create_index("ix_lease_released_at", "lease", ["released_at"])


def downgrade() -> None:
    op.drop_index("ix_lease_released_at", table_name="lease")
    op.drop_index("ix_lease_cooldown_until", table_name="lease")
    op.drop_index("ix_lease_expires_at", table_name="lease")
    op.drop_index("ix_lease_cluster_pod_uid", table_name="lease")
    op.drop_index("uq_lease_pool_address_blocking", table_name="lease")
    op.create_index(
        "uq_lease_pool_address_held",
        "lease",
        ["pool_id", "address"],
        unique=True,
        sqlite_where=sa.text(HELD),
        postgresql_where=sa.text(HELD),
    )
    with op.batch_alter_table("lease") as batch:
        for column in ("options", "mac", "network", "cooldown_until", "expires_at"):
            batch.drop_column(column)
    with op.batch_alter_table("pool") as batch:
        for column in (
            "updated_at",
            "generation",
            "vlan",
            "cluster",
            "selectors",
            "priority",
            "cooldown_seconds",
            "dns",
            "routes",
        ):
            batch.drop_column(column)
