"""Attach profiles: the attach driver and options that the pods of matching nodes get.

A profile selects nodes by labels. The profile that applies to a node is the
one of the highest priority whose ``nodeSelector`` is a subset of the node's
labels; among equal priorities the first by name wins. ipamd puts it into
every lease response as ``attach``. A driver named in the CNI network
configuration still wins over the profile; the node daemon decides that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from leasewire.api import AttachProfileSpec, AttachProfileView, AttachView, LeaseView
from leasewire.ipamd.errors import IpamError
from leasewire.ipamd.models import Base, UTCDateTime, utcnow
from leasewire.ipamd.nodes import Node


class ProfileNotFound(IpamError):
    status = 404
    code = "profile_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"attach profile {name!r} not found; create it with PUT /v1/attach-profiles/{name}",
            {"profile": name},
        )


class AttachProfile(Base):
    __tablename__ = "attach_profile"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    node_selector: Mapped[dict[str, str]] = mapped_column(JSON)
    driver: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def profile_view(profile: AttachProfile) -> AttachProfileView:
    return AttachProfileView(
        name=profile.name,
        nodeSelector=dict(profile.node_selector),
        driver=profile.driver,
        options=dict(profile.options),
        priority=profile.priority,
    )


async def read_profile(session: AsyncSession, name: str) -> AttachProfile | None:
    found: AttachProfile | None = await session.scalar(
        select(AttachProfile).where(AttachProfile.name == name)
    )
    return found


async def read_profiles(session: AsyncSession) -> list[AttachProfile]:
    return list(await session.scalars(select(AttachProfile).order_by(AttachProfile.name)))


async def upsert_profile(
    session: AsyncSession, name: str, spec: AttachProfileSpec
) -> tuple[AttachProfile, bool]:
    """Create the profile or replace its spec; return it and whether it is new."""
    profile = await read_profile(session, name)
    created = profile is None
    if profile is None:
        profile = AttachProfile(name=name)
        session.add(profile)
    profile.node_selector = dict(spec.node_selector)
    profile.driver = spec.driver
    profile.options = dict(spec.options)
    profile.priority = spec.priority
    profile.updated_at = utcnow()
    await session.flush()
    return profile, created


async def delete_profile(session: AsyncSession, name: str) -> AttachProfile:
    profile = await read_profile(session, name)
    if profile is None:
        raise ProfileNotFound(name)
    await session.delete(profile)
    await session.flush()
    return profile


def select_profile(
    profiles: Sequence[AttachProfile], labels: Mapping[str, str]
) -> AttachProfile | None:
    """Return the profile that applies to a node with ``labels``, or None."""
    matching = [
        profile
        for profile in profiles
        if all(labels.get(key) == value for key, value in profile.node_selector.items())
    ]
    if not matching:
        return None
    return min(matching, key=lambda profile: (-profile.priority, profile.name))


async def with_attach(session: AsyncSession, views: Sequence[LeaseView]) -> list[LeaseView]:
    """Return ``views`` with ``attach`` set to the profile that applies to each lease's node."""
    profiles = await read_profiles(session)
    if not profiles:
        return list(views)
    keys = {(view.owner.cluster, view.node) for view in views}
    labels: dict[tuple[str, str], dict[str, str]] = {}
    for cluster, node_name in keys:
        node: Node | None = await session.scalar(
            select(Node).where(Node.cluster == cluster, Node.name == node_name)
        )
        labels[(cluster, node_name)] = dict(node.labels) if node is not None else {}
    result = []
    for view in views:
        profile = select_profile(profiles, labels[(view.owner.cluster, view.node)])
        attach = (
            AttachView(profile=profile.name, driver=profile.driver, options=dict(profile.options))
            if profile is not None
            else None
        )
        result.append(view.model_copy(update={"attach": attach}))
    return result
