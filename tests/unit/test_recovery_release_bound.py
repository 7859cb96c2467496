"""Queued releases bounded by ipamd's clock, and the node daemon's state files of older
versions, against a real ipamd on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from leasewire.api import Owner, PodRef
from leasewire.cni.ipamclient import IpamClient, LeaseRequest, NodeLease
from leasewire.cni.journal import (
    AddJournal,
    AddRecord,
    AttachmentRecord,
    AttachmentRecords,
    PluginCall,
)
from leasewire.cni.releasequeue import ReleaseQueue, just_after, release_bound
from leasewire.ipamd.app import create_app

NETWORK = "net1"
# A queue time from a node clock far behind ipamd's.
NODE_CLOCK_BEHIND = "2000-01-01T00:00:00.000000Z"


@pytest.fixture
async def ipam(tmp_path: Path) -> AsyncIterator[IpamClient]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ipamd.db'}"
    async with TestServer(create_app(url)) as server, aiohttp.ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        pool = {"name": "p1", "cidr": "10.77.0.0/24", "gateway": "10.77.0.1"}
        async with session.post(base + "/v1/pools", json=pool) as response:
            assert response.status == 201, await response.text()
        yield IpamClient(session, base)


def owner(container: str) -> Owner:
    return Owner(cluster="c1", containerID=container, ifname="eth0")


async def lease_for(ipam: IpamClient, container: str) -> NodeLease:
    leases, created = await ipam.create_leases(
        LeaseRequest(
            owner=owner(container), pod=PodRef(), node="n1", network=NETWORK, pools=("p1",)
        )
    )
    assert created
    (lease,) = leases
    return lease


def moment(timestamp: str) -> datetime:
    value = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def test_bound_is_strictly_after_created_at(ipam: IpamClient) -> None:
    lease = await lease_for(ipam, "pod-bound")

    bound = release_bound([lease.created_at])

    assert lease.created_at
    assert bound is not None
    assert moment(bound) > moment(lease.created_at)
    assert (moment(bound) - moment(lease.created_at)).total_seconds() < 0.001


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["2026-01-02T03:04:05.000001"], "2026-01-02T03:04:05.000002+00:00"),
        (["2026-01-02T03:04:05Z"], "2026-01-02T03:04:05.000001+00:00"),
        (
            ["2026-01-02T03:04:05+00:00", "2026-01-02T04:00:00+01:00"],
            "2026-01-02T03:04:05.000001+00:00",
        ),
        (["", "not a time"], None),
        ([], None),
    ],
)
def test_release_bound_formats(values: list[str], expected: str | None) -> None:
    bound = release_bound(values)

    if expected is None:
        assert bound is None
    else:
        assert bound is not None
        assert moment(bound) == moment(expected)


def test_just_after_unreadable() -> None:
    assert just_after("yesterday") is None


async def test_replay_with_node_clock_behind_releases(ipam: IpamClient, tmp_path: Path) -> None:
    lease = await lease_for(ipam, "pod-skew")
    queue = ReleaseQueue(tmp_path / "state")
    await queue.add(owner("pod-skew"), NETWORK, created_before=release_bound([lease.created_at]))
    # Rewrite the entry as a node whose clock is far behind ipamd's would have queued it.
    line = json.loads(queue.path.read_text())
    line["queuedAt"] = NODE_CLOCK_BEHIND
    queue.path.write_text(json.dumps(line) + "\n")

    restarted = ReleaseQueue(tmp_path / "state")
    left = await restarted.replay(ipam)

    assert left == 0
    assert await ipam.find_leases(owner("pod-skew"), NETWORK) == []


async def test_replay_spares_lease_created_after_bound(ipam: IpamClient, tmp_path: Path) -> None:
    first = await lease_for(ipam, "pod-newer")
    queue = ReleaseQueue(tmp_path / "state")
    await queue.add(owner("pod-newer"), NETWORK, created_before=release_bound([first.created_at]))
    await ipam.release_leases(owner("pod-newer"), network=NETWORK)
    second = await lease_for(ipam, "pod-newer")

    await queue.replay(ipam)

    (held,) = await ipam.find_leases(owner("pod-newer"), NETWORK)
    assert held.address == second.address
    assert held.created_at == second.created_at


async def test_queue_line_without_bound_replays(ipam: IpamClient, tmp_path: Path) -> None:
    await lease_for(ipam, "pod-old-line")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # A line as older node daemons wrote it: the node's queue time, no createdBefore.
    line = {
        "owner": owner("pod-old-line").model_dump(mode="json", by_alias=True),
        "network": NETWORK,
        "queuedAt": NODE_CLOCK_BEHIND,
    }
    (state_dir / "release-queue.jsonl").write_text(json.dumps(line) + "\n")

    queue = ReleaseQueue(state_dir)
    (entry,) = queue._entries
    left = await queue.replay(ipam)

    assert entry.created_before is None
    assert left == 0
    assert await ipam.find_leases(owner("pod-old-line"), NETWORK) == []


def test_attachment_record_keeps_created_at(tmp_path: Path) -> None:
    records = AttachmentRecords(tmp_path)
    record = AttachmentRecord(
        network=NETWORK,
        driver="bridge",
        options={"bridge": "br0"},
        addresses=("10.77.0.2/24",),
        created_at=("2026-01-02T03:04:05.000001",),
    )

    records.save(owner("pod-record"), record)

    assert records.load(owner("pod-record"), NETWORK) == record


def test_attachment_record_of_older_daemon_loads(tmp_path: Path) -> None:
    records = AttachmentRecords(tmp_path)
    records.save(
        owner("pod-old-record"),
        AttachmentRecord(network=NETWORK, driver="bridge", options={}, addresses=("10.77.0.3/24",)),
    )
    (path,) = records.directory.glob("*.json")
    item = json.loads(path.read_text())
    del item["createdAt"]
    path.write_text(json.dumps(item))

    loaded = records.load(owner("pod-old-record"), NETWORK)

    assert loaded is not None
    assert loaded.addresses == ("10.77.0.3/24",)
    assert loaded.created_at == ()


def test_journal_keeps_ipam_plugin(tmp_path: Path) -> None:
    journal = AddJournal(tmp_path)
    plugin = PluginCall(
        config={"cniVersion": "1.0.0", "name": NETWORK, "ipam": {"type": "host-local"}},
        env={"CNI_CONTAINERID": "pod-plugin", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"},
    )
    journal.begin(
        AddRecord(
            owner=owner("pod-plugin"),
            network=NETWORK,
            netns="/run/netns/x",
            driver="bridge",
            options={},
            plugin=plugin,
        )
    )

    (record,) = AddJournal(tmp_path).leftovers()

    assert record.plugin == plugin


def test_journal_entry_of_older_daemon_loads(tmp_path: Path) -> None:
    journal = AddJournal(tmp_path)
    entry = {
        "owner": owner("pod-old-add").model_dump(mode="json", by_alias=True),
        "network": NETWORK,
        "netns": "/run/netns/x",
        "driver": "bridge",
        "options": {},
    }
    (journal.directory / "old.json").write_text(json.dumps(entry))

    (record,) = journal.leftovers()

    assert record.owner == owner("pod-old-add")
    assert record.plugin is None
