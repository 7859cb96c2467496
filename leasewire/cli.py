"""The ``leasewire`` command: one entry point for every daemon and tool.

Each subcommand imports its module only when it runs, so that ``leasewire
install-cni`` does not pay for SQLAlchemy and ``leasewire ipamd`` does not pay
for pyroute2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DEFAULT_SOCKET = "/run/leasewire/node.sock"
DEFAULT_IPAMD_LISTEN = "127.0.0.1:8470"
DEFAULT_STATE_DIR = "/var/lib/leasewire"


def _add_ipamd(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ipamd", help="run the central IPAM daemon")
    parser.add_argument(
        "--listen",
        default=DEFAULT_IPAMD_LISTEN,
        help="HOST:PORT to serve HTTP on (default %(default)s)",
    )
    parser.add_argument(
        "--database",
        default=f"sqlite+aiosqlite:///{DEFAULT_STATE_DIR}/ipamd.db",
        help="SQLAlchemy async URL (default %(default)s)",
    )
    parser.add_argument(
        "--pending-ttl",
        type=float,
        default=120.0,
        help="seconds a new lease stays pending without confirm before it expires "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ipamd processes sharing the listen port (SO_REUSEPORT); more than 1 needs "
        "PostgreSQL (default %(default)s)",
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=["serve", "migrate"],
        default="serve",
        help="serve (default: upgrade the schema, then serve) or migrate (upgrade and exit)",
    )
    parser.set_defaults(handler="leasewire.ipamd.main:main")


def _add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("node", help="run the node daemon that the CNI shim talks to")
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, help="unix socket to serve (default %(default)s)"
    )
    parser.add_argument(
        "--ipamd",
        default=f"http://{DEFAULT_IPAMD_LISTEN}",
        help="base URL of ipamd (default %(default)s)",
    )
    parser.add_argument(
        "--cluster", default="default", help="cluster name recorded in every lease owner"
    )
    parser.add_argument(
        "--node-name", default=None, help="node name recorded in leases (default: the host name)"
    )
    parser.add_argument(
        "--state-dir",
        default=f"{DEFAULT_STATE_DIR}/node",
        help="directory for the node daemon's local state (default %(default)s)",
    )
    parser.set_defaults(handler="leasewire.cni.node:main")


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("up", help="run ipamd (SQLite) and the node daemon in one process")
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="directory for the SQLite database and node state",
    )
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, help="node daemon unix socket (default %(default)s)"
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_IPAMD_LISTEN,
        help="HOST:PORT for ipamd's HTTP API (default %(default)s)",
    )
    parser.add_argument(
        "--pool", default="default", help="name of the default pool (default %(default)s)"
    )
    parser.add_argument(
        "--pool-cidr",
        default="10.250.0.0/24",
        help="CIDR of the default pool, created if missing (default %(default)s)",
    )
    parser.set_defaults(handler="leasewire.allinone:main")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="wire a few network-namespace pods through the installed CNI shim"
    )
    parser.add_argument("--pods", type=int, default=3, help="number of pods (default %(default)s)")
    parser.add_argument(
        "--bin-dir", default="/opt/cni/bin", help="directory holding the installed shim"
    )
    parser.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="directory holding the leasewire conflist"
    )
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="state directory of the all-in-one daemon"
    )
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, help="node daemon unix socket (default %(default)s)"
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_IPAMD_LISTEN,
        help="ipamd HOST:PORT, used to start the daemon and to read the pool (default %(default)s)",
    )
    parser.add_argument(
        "--pool-cidr",
        default="10.250.0.0/24",
        help="CIDR of the pool that a daemon started by the demo creates (default %(default)s)",
    )
    parser.set_defaults(handler="leasewire.demo:main")


def _add_install_cni(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("install-cni", help="install the CNI shim and a conflist")
    parser.add_argument(
        "--bin-dir", default="/opt/cni/bin", help="CNI plugin directory (default %(default)s)"
    )
    parser.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="CNI config directory (default %(default)s)"
    )
    parser.add_argument(
        "--network", default="leasewire", help="network name in the conflist (default %(default)s)"
    )
    parser.add_argument(
        "--pool", default="default", help="pool named in the conflist (default %(default)s)"
    )
    parser.add_argument("--driver", default="bridge", help="attach driver (default %(default)s)")
    parser.add_argument(
        "--bridge", default="lw0", help="bridge name for the bridge driver (default %(default)s)"
    )
    parser.add_argument(
        "--mtu", type=int, default=1500, help="pod interface MTU in bytes (default %(default)s)"
    )
    parser.add_argument("--socket", default=None, help="node daemon socket, if not the default")
    parser.add_argument(
        "--python",
        default=None,
        help="Python 3.11+ that runs the shim (default: /usr/bin/python3 if it is 3.11+, "
        "else the Python running this command)",
    )
    parser.add_argument(
        "--conf-name",
        default=None,
        help="file name of the conflist (default: 10-NETWORK.conflist, which sorts early)",
    )
    parser.set_defaults(handler="leasewire.cni.install:main")


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "operator", help="run the Kubernetes operator: IPPool and AttachProfile resources, GC"
    )
    parser.add_argument(
        "--ipamd",
        default=f"http://{DEFAULT_IPAMD_LISTEN}",
        help="base URL of ipamd (default %(default)s)",
    )
    parser.add_argument(
        "--cluster", default="default", help="cluster name of this cluster's leases and pools"
    )
    parser.add_argument(
        "--token-file", default=None, help="file holding the cluster's bearer token for ipamd"
    )
    parser.add_argument(
        "--namespace",
        action="append",
        help="serve only the pods of this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--peering",
        default="leasewire",
        help="name of the ClusterKopfPeering shared by the replicas (default %(default)s)",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="run without peering (a single replica)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest acts, the others wait (default: random)",
    )
    parser.add_argument(
        "--pool-refresh",
        type=float,
        default=60.0,
        help="seconds between pool status refreshes and lease reconciliations "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--pod-grace",
        type=float,
        default=120.0,
        help="seconds between the two pod listings a lease's pod must be absent from "
        "before its release (default %(default)s)",
    )
    parser.add_argument(
        "--node-grace",
        type=float,
        default=300.0,
        help="seconds after a node's deletion before its leases are released (default %(default)s)",
    )
    parser.set_defaults(handler="leasewire.operator.main:main")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leasewire", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ipamd(sub)
    _add_node(sub)
    _add_up(sub)
    _add_demo(sub)
    _add_install_cni(sub)
    _add_operator(sub)
    from leasewire import ctl

    ctl.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic logs one INFO line per built-in plugin on its first import,
    # which can come before leasewire.ipamd.db quiets it.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    module_name, _, function_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
