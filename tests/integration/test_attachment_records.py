"""DEL reads the driver from the node daemon's attachment record and sends
ipamd only the release; without the record it requests the driver from ipamd first.

Each test runs a real ipamd subprocess behind a counting proxy and an
in-process node daemon, and wires a real bridge and veth pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leasewire.cni.journal import ATTACHMENTS_DIRECTORY
from leasewire.cni.node import start_node
from leasewire.drivers.netlink import host_veth_name

from .conftest import ip, link_exists, unique_name
from .daemons import Ipamd
from .ipamdproxy import run_proxy
from .test_faults import CONFIRM, CREATE, held, make_pool, run_shim, settings

FIND = ("GET", "/v1/leases")
RELEASE = ("DELETE", "/v1/leases")


@pytest.fixture
def daemon_dir(session_dir: Path) -> Path:
    directory = session_dir / unique_name("record-")
    directory.mkdir()
    return directory


@pytest.fixture
def bridge_name() -> Iterator[str]:
    name = unique_name()
    yield name
    ip("link", "del", name, check=False)


def records(daemon_dir: Path) -> list[Path]:
    return sorted((daemon_dir / "state" / ATTACHMENTS_DIRECTORY).glob("*.json"))


@pytest.mark.parametrize("state_lost", [False, True], ids=["record", "no-record"])
async def test_del_reads_driver_from_record_else_ipamd(
    daemon_dir: Path,
    ipamd: Ipamd,
    bridge_name: str,
    make_netns: Callable[[], str],
    state_lost: bool,
) -> None:
    pool = make_pool(ipamd)
    netns = f"/run/netns/{make_netns()}"
    container = unique_name("pod-")
    async with run_proxy(ipamd.url) as proxy:
        runner = await start_node(settings(daemon_dir, proxy.url))
        try:
            sock = daemon_dir / "node.sock"
            added = await run_shim(
                sock, "ADD", container, netns, pool=pool.name, bridge=bridge_name
            )
            assert added.exit_code == 0, added
            assert proxy.seen == [CREATE, CONFIRM]
            assert len(records(daemon_dir)) == 1
            if state_lost:
                records(daemon_dir)[0].unlink()

            deleted = await run_shim(
                sock, "DEL", container, netns, pool=pool.name, bridge=bridge_name
            )
        finally:
            await runner.cleanup()

    assert deleted.exit_code == 0, deleted
    expected = [FIND, RELEASE] if state_lost else [RELEASE]
    assert proxy.seen[2:] == expected
    assert records(daemon_dir) == []
    assert not link_exists(host_veth_name(container, "eth0"))
    assert held(ipamd, pool, container) == []
