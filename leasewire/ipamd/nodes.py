"""Nodes and their labels, per cluster, as the operator syncs them from Kubernetes.

Attach profiles select nodes by these labels. A node that ipamd has never
heard of has no labels, so only profiles with an empty selector apply to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from leasewire.api import NodeSpec, NodeView
from leasewire.ipamd.models import Base, UTCDateTime, utcnow


class Node(Base):
    __tablename__ = "node"
    __table_args__ = (UniqueConstraint("cluster", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def node_view(node: Node) -> NodeView:
    return NodeView(name=node.name, cluster=node.cluster, labels=dict(node.labels))


async def read_node(session: AsyncSession, cluster: str, name: str) -> Node | None:
    found: Node | None = await session.scalar(
        select(Node).where(Node.cluster == cluster, Node.name == name)
    )
    return found


async def read_nodes(session: AsyncSession, cluster: str | None) -> list[Node]:
    query = select(Node).order_by(Node.cluster, Node.name)
    if cluster is not None:
        query = query.where(Node.cluster == cluster)
    return list(await session.scalars(query))


async def upsert_node(session: AsyncSession, name: str, spec: NodeSpec) -> tuple[Node, bool]:
    """Create the node or replace its labels; return it and whether it is new."""
    node = await read_node(session, spec.cluster, name)
    if node is None:
        node = Node(cluster=spec.cluster, name=name, labels=dict(spec.labels))
        session.add(node)
        await session.flush()
        return node, True
    node.labels = dict(spec.labels)
    node.updated_at = utcnow()
    await session.flush()
    return node, False


async def delete_node(session: AsyncSession, cluster: str, name: str) -> Node | None:
    node = await read_node(session, cluster, name)
    if node is not None:
        await session.delete(node)
        await session.flush()
    return node
