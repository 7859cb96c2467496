#!/usr/bin/env bash
# Prepare a Debian bookworm machine for leasewire: system packages, podman's
# CNI backend, the CNI plugin directory and the Python venv in .venv.
#
# Run as root from anywhere; it works on the repository this script lives in.
# Every step checks before it changes anything, so running it again is cheap
# and changes nothing that is already in place.
set -euo pipefail

# ---- apt packages -----------------------------------------------------------
# Everything the project and its tests need from Debian. Add new system
# dependencies here, and only here.
APT_PACKAGES=(
    python3
    python3-venv
    python3-dev
    iproute2
    iputils-ping
    podman
    runc
    containernetworking-plugins
    busybox-static
)
# -----------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$REPO_ROOT/.venv"
CNI_BIN_DIR=/opt/cni/bin
DEBIAN_CNI_DIR=/usr/lib/cni
CONTAINERS_DROP_IN=/etc/containers/containers.conf.d/leasewire-cni.conf

step() {
    echo "setup: $*"
}

if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup: must run as root (it installs packages and writes /etc/containers and /opt/cni)" >&2
    exit 1
fi

# 1. System packages: update the package lists once, and only when something
#    is missing.
missing=()
for package in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$package")
    fi
done
if ((${#missing[@]} > 0)); then
    step "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    step "apt packages already installed (${#APT_PACKAGES[@]})"
fi

# 2. podman: the CNI network backend, because podman 4 picks netavark when it
#    is installed and containers.conf sets no backend; and runc, because crun
#    rejects the hybrid cgroup layout of some machines.
drop_in_text='# Written by leasewire scripts/setup.sh.
[engine]
runtime = "runc"

[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]'
if [[ -f "$CONTAINERS_DROP_IN" ]] && [[ "$(cat "$CONTAINERS_DROP_IN")" == "$drop_in_text" ]]; then
    step "podman CNI backend already configured in $CONTAINERS_DROP_IN"
else
    step "configuring podman (CNI backend, runc) in $CONTAINERS_DROP_IN"
    mkdir -p "$(dirname "$CONTAINERS_DROP_IN")"
    printf '%s\n' "$drop_in_text" >"$CONTAINERS_DROP_IN.tmp"
    mv -f "$CONTAINERS_DROP_IN.tmp" "$CONTAINERS_DROP_IN"
fi

# 3. /opt/cni/bin: ctr (go-cni) looks for plugins only there, while Debian
#    installs the reference plugins in /usr/lib/cni. Files already present in
#    /opt/cni/bin are left alone.
mkdir -p "$CNI_BIN_DIR"
linked=0
for plugin in "$DEBIAN_CNI_DIR"/*; do
    [[ -f "$plugin" && -x "$plugin" ]] || continue
    target="$CNI_BIN_DIR/$(basename "$plugin")"
    if [[ ! -e "$target" && ! -L "$target" ]]; then
        ln -s "$plugin" "$target"
        linked=$((linked + 1))
    fi
done
step "reference CNI plugins in $CNI_BIN_DIR: $linked new links to $DEBIAN_CNI_DIR"

# 4. Python venv with the project installed in editable mode. pip runs again
#    only when pyproject.toml changed since the last successful install.
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    step "creating the venv $VENV_DIR"
    python3 -m venv "$VENV_DIR"
else
    step "venv $VENV_DIR already exists"
fi
stamp="$VENV_DIR/.leasewire-installed"
wanted="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ -f "$stamp" && -x "$VENV_DIR/bin/leasewire" ]] && [[ "$(cat "$stamp")" == "$wanted" ]]; then
    step "leasewire and its test dependencies already installed in the venv"
else
    step "installing leasewire[test] into the venv (pip install -e, warnings hidden)"
    (cd "$REPO_ROOT" && "$VENV_DIR/bin/python" -m pip install -qq --disable-pip-version-check -e '.[test]')
    echo "$wanted" >"$stamp"
fi
