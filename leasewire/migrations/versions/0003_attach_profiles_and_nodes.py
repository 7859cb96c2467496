"""Add attach profiles and nodes.

Revision ID: 0003
Revises: 0002

``attach_profile`` maps a node label selector to an attach driver and its
options, with a priority. ``node`` holds the labels of each node, per cluster.
A lease's answer carries the profile of the highest priority whose selector
matches its node's labels.

Running the upgrade twice is safe, because Alembic records the revision. The
downgrade drops both tables and with them every profile and node; leases keep
the driver and options recorded at confirm, so existing pods are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "attach_profile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("node_selector", sa.JSON(), nullable=False),
        sa.Column("driver", sa.String(64), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_attach_profile"),
        sa.UniqueConstraint("name", name="uq_attach_profile_name"),
    )
    op.create_table(
        "node",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_node"),
        sa.UniqueConstraint("cluster", "name", name="uq_node_cluster_name"),
    )


def downgrade() -> None:
    op.drop_table("node")
    op.drop_table("attach_profile")
