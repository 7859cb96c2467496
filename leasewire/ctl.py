"""``leasewire pool ...`` and ``leasewire lease ...``: manage a running ipamd from the shell.

Standard library only (urllib), so the commands start fast. Errors from ipamd
are printed as their code and message, with exit status 1; an unreachable
ipamd exits with status 2 and says which URL was tried.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_IPAMD_URL = "http://127.0.0.1:8470"
TIMEOUT_S = 10.0
"""Seconds to wait for one answer of ipamd."""


class CtlError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def request(
    base_url: str,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: object = None,
) -> Any:
    """Send one request to ipamd and return the decoded JSON answer. Raises CtlError."""
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise CtlError(
            f"invalid --ipamd {base_url!r}: give a URL with its scheme, "
            f"e.g. http://{base_url.split('://')[-1] or '127.0.0.1:8470'}",
            status=2,
        )
    url = base_url.rstrip("/") + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    http_request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(http_request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            answer = json.loads(raw)
            message = f"{answer.get('code', error.code)}: {answer.get('message', raw.decode())}"
        except (ValueError, AttributeError):
            message = f"HTTP {error.code}: {raw.decode(errors='replace')}"
        raise CtlError(f"{method} {path} failed: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise CtlError(
            f"ipamd at {base_url} is not reachable ({error}); start it with 'leasewire ipamd' "
            "or pass --ipamd URL",
            status=2,
        ) from None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format rows as a plain text table with left-aligned columns."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _pool_rows(pools: list[dict[str, Any]]) -> str:
    headers = ("NAME", "CIDR", "GATEWAY", "SCOPE", "PRIO", "SIZE", "ALLOCATED", "COOLING", "FREE")
    rows = [
        (
            pool["name"],
            pool["cidr"],
            pool.get("gateway") or "-",
            pool.get("cluster") or "global",
            pool.get("priority", 0),
            pool["size"],
            pool["allocated"],
            pool.get("cooling", 0),
            pool["free"],
        )
        for pool in pools
    ]
    return format_table(headers, rows)


def _lease_rows(leases: list[dict[str, Any]]) -> str:
    headers = ("POOL", "ADDRESS", "STATE", "POD", "NODE", "CONTAINER", "IFNAME")
    rows = [
        (
            lease["pool"],
            lease["address"],
            lease["state"],
            f"{lease['pod']['namespace']}/{lease['pod']['name']}" if lease["pod"]["name"] else "-",
            lease["node"] or "-",
            lease["owner"]["containerID"][:12],
            lease["owner"]["ifname"],
        )
        for lease in leases
    ]
    return format_table(headers, rows)


def _show_pool(pool: dict[str, Any]) -> str:
    ranges = ", ".join(f"{item['start']}-{item['end']}" for item in pool["ranges"]) or "whole CIDR"
    lines = [
        ("name", pool["name"]),
        ("cidr", pool["cidr"]),
        ("gateway", pool.get("gateway") or "-"),
        ("ranges", ranges),
        ("exclude", ", ".join(pool["exclude"]) or "-"),
        ("scope", pool.get("cluster") or "global"),
        ("vlan", pool.get("vlan") or "-"),
        ("priority", pool.get("priority", 0)),
        ("cooldown", f"{pool.get('cooldownSeconds', 0)} s"),
        ("routes", ", ".join(_route(route) for route in pool.get("routes", [])) or "-"),
        ("dns", ", ".join(pool.get("dns", {}).get("nameservers", [])) or "-"),
        ("generation", pool.get("generation", 1)),
        ("size", pool["size"]),
        (
            "allocated",
            f"{pool['allocated']} ({pool.get('bound', 0)} bound, {pool.get('pending', 0)} pending)",
        ),
        ("cooling", pool.get("cooling", 0)),
        ("free", pool["free"]),
    ]
    return "\n".join(f"{key + ':':<12}{value}" for key, value in lines)


def _route(route: dict[str, str]) -> str:
    return route["dst"] + (f" via {route['gw']}" if route.get("gw") else "")


def _pool_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"cidr": args.cidr, "priority": args.priority}
    if args.gateway:
        spec["gateway"] = args.gateway
    if args.range:
        ranges = []
        for text in args.range:
            start, separator, end = text.partition("-")
            if not separator:
                raise CtlError(f"invalid --range {text!r}: expected START-END", status=2)
            ranges.append({"start": start, "end": end})
        spec["ranges"] = ranges
    if args.exclude:
        spec["exclude"] = args.exclude
    if args.cluster:
        spec["cluster"] = args.cluster
    if args.vlan is not None:
        spec["vlan"] = args.vlan
    if args.cooldown is not None:
        spec["cooldownSeconds"] = args.cooldown
    if args.route:
        spec["routes"] = [_parse_route(text) for text in args.route]
    if args.nameserver:
        spec["dns"] = {"nameservers": args.nameserver}
    return spec


def _parse_route(text: str) -> dict[str, str]:
    destination, _, gateway = text.partition(",")
    return {"dst": destination, "gw": gateway} if gateway else {"dst": destination}


def run_pool(args: argparse.Namespace) -> str:
    url = args.ipamd
    if args.pool_action == "list":
        return _pool_rows(request(url, "GET", "/v1/pools"))
    if args.pool_action == "show":
        return _show_pool(request(url, "GET", f"/v1/pools/{args.name}"))
    if args.pool_action == "create":
        # POST: creating a pool that exists with another spec is an error, so
        # that a typo cannot silently rewrite a pool in use.
        body = {"name": args.name, **_pool_spec(args)}
        pool = request(url, "POST", "/v1/pools", body=body)
        return f"pool {pool['name']} ready: {pool['size']} usable addresses\n" + _show_pool(pool)
    if args.pool_action == "update":
        pool = request(url, "PUT", f"/v1/pools/{args.name}", body=_pool_spec(args))
        return f"pool {pool['name']} updated: {pool['size']} usable addresses\n" + _show_pool(pool)
    request(url, "DELETE", f"/v1/pools/{args.name}")
    return f"pool {args.name} deleted"


def run_lease(args: argparse.Namespace) -> str:
    url = args.ipamd
    names = ("pool", "node", "cluster", "podUID", "containerID", "ifname", "network", "state")
    query = {name: getattr(args, name) for name in names if getattr(args, name, None)}
    if args.lease_action == "list":
        return _lease_rows(request(url, "GET", "/v1/leases", query=query))
    query.pop("state", None)
    answer = request(url, "DELETE", "/v1/leases", query=query)
    released = answer["released"] if isinstance(answer, dict) else answer
    if not released:
        return "no held lease matched; nothing released"
    return f"released {len(released)} lease(s)\n" + _lease_rows(released)


def main(args: argparse.Namespace) -> int:
    try:
        output = run_pool(args) if args.command == "pool" else run_lease(args)
    except CtlError as error:
        print(f"leasewire {args.command}: {error}", file=sys.stderr)
        return error.status
    print(output)
    return 0


def _add_ipamd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ipamd", default=DEFAULT_IPAMD_URL, help="base URL of ipamd (default %(default)s)"
    )


def _add_lease_filters(parser: argparse.ArgumentParser) -> None:
    for option, dest in (
        ("--pool", "pool"),
        ("--node", "node"),
        ("--cluster", "cluster"),
        ("--pod-uid", "podUID"),
        ("--container-id", "containerID"),
        ("--ifname", "ifname"),
        ("--network", "network"),
    ):
        parser.add_argument(option, dest=dest, help=f"only leases with this {dest}")


def _add_pool_spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("cidr", help="the pool's CIDR, e.g. 10.20.0.0/16")
    parser.add_argument("--gateway", help="gateway address inside the CIDR (never leased)")
    parser.add_argument("--range", action="append", help="START-END, inclusive; repeatable")
    parser.add_argument("--exclude", action="append", help="address, CIDR or START-END")
    parser.add_argument("--cluster", help="only this cluster may use the pool (default: all)")
    parser.add_argument("--vlan", type=int, help="VLAN id, 1-4094")
    parser.add_argument("--priority", type=int, default=0, help="higher is chosen first")
    parser.add_argument("--cooldown", type=int, help="seconds a released address rests")
    parser.add_argument("--route", action="append", help="DST[,GW] route for pods; repeatable")
    parser.add_argument("--nameserver", action="append", help="DNS server for pods; repeatable")
    _add_ipamd_option(parser)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pool`` and ``lease`` with the ``leasewire`` parser."""
    pool = sub.add_parser(
        "pool", help="list, show, create, update or delete pools of a running ipamd"
    )
    pool_sub = pool.add_subparsers(dest="pool_action", required=True)
    pool_list = pool_sub.add_parser("list", help="list pools with their usage")
    _add_ipamd_option(pool_list)
    for action, text in (("show", "show one pool"), ("delete", "delete an unused pool")):
        parser = pool_sub.add_parser(action, help=text)
        parser.add_argument("name")
        _add_ipamd_option(parser)
    for action, text in (
        ("create", "create a pool (an existing pool with another spec is an error)"),
        ("update", "replace a pool's spec; the CIDR cannot change and held leases stay"),
    ):
        _add_pool_spec_options(pool_sub.add_parser(action, help=text))
    pool.set_defaults(handler="leasewire.ctl:main")

    lease = sub.add_parser("lease", help="list or release leases of a running ipamd")
    lease_sub = lease.add_subparsers(dest="lease_action", required=True)
    lease_list = lease_sub.add_parser("list", help="list leases (held ones by default)")
    _add_lease_filters(lease_list)
    lease_list.add_argument("--state", help="pending, bound, released, held (default) or all")
    _add_ipamd_option(lease_list)
    release = lease_sub.add_parser(
        "release",
        help="release held leases; needs --cluster and --container-id, --pod-uid or --node",
    )
    _add_lease_filters(release)
    _add_ipamd_option(release)
    lease.set_defaults(handler="leasewire.ctl:main")
