#!/usr/bin/env bash
# Set up this machine, install the CNI shim and a conflist, and run the demo:
# the all-in-one daemon on SQLite wires three network-namespace pods, which
# ping each other and the node, and are then deleted again.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "quickstart: installing the CNI shim into /opt/cni/bin and a conflist into /etc/cni/net.d"
.venv/bin/leasewire install-cni --bin-dir /opt/cni/bin --conf-dir /etc/cni/net.d
echo "quickstart: running the demo"
exec .venv/bin/leasewire demo "$@"
