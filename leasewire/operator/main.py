"""``leasewire operator``: run the Kopf operator that connects a cluster to ipamd."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from leasewire.operator.app import run_operator
from leasewire.operator.config import OperatorConfig

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        ipamd_url=args.ipamd,
        cluster=args.cluster,
        token_file=Path(args.token_file) if args.token_file else None,
        namespaces=tuple(args.namespace or ()),
        peering=args.peering,
        standalone=args.standalone,
        priority=args.priority,
        pool_refresh_seconds=args.pool_refresh,
        pod_grace_seconds=args.pod_grace,
        node_grace_seconds=args.node_grace,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``leasewire operator`` until SIGTERM or SIGINT; return the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        log.error("%s", error)
        return 2
    try:
        asyncio.run(run_operator(config))
    except OSError as error:
        log.error("the operator failed: %s", error)
        return 1
    log.info("operator stopped")
    return 0
