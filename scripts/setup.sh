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
    # The ctr test (tests/e2e/test_ctr.py) runs a private containerd with `ctr run --cni`.
    containerd
    # The VM tests (tests/vm): depmod and modprobe for the guest kernel's modules.
    kmod
    # ipamd's PostgreSQL tests and benchmark start a private server (initdb, pg_ctl, pgbench).
    postgresql
    postgresql-contrib
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

# 5. The VM for the ipvlan, VLAN and SR-IOV tests (tests/vm): QEMU 8 or newer
#    from bookworm-backports (bookworm's QEMU 7.2 lacks the SR-IOV capable
#    "-device igb"), and Debian's kernel package extracted into a cache
#    directory, so the host's /boot stays untouched.
BACKPORTS_LIST=/etc/apt/sources.list.d/leasewire-backports.list
VM_KERNEL_DIR=/opt/leasewire/vm-kernel
qemu_major="$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')"
if [[ -n "$qemu_major" && "$qemu_major" -ge 8 ]]; then
    step "QEMU $qemu_major already installed"
else
    step "installing qemu-system-x86 from bookworm-backports"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS_LIST"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
if compgen -G "$VM_KERNEL_DIR/root/boot/vmlinuz-*" >/dev/null; then
    step "VM kernel already in $VM_KERNEL_DIR"
else
    kernel_package="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
    if [[ -z "$kernel_package" ]]; then
        # The package lists are missing or stale when every apt package was
        # already installed and step 1 skipped the update.
        apt-get update -qq
        kernel_package="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
    fi
    step "extracting $kernel_package into $VM_KERNEL_DIR for the VM tests"
    rm -rf "$VM_KERNEL_DIR"
    mkdir -p "$VM_KERNEL_DIR"
    (cd "$VM_KERNEL_DIR" && apt-get download -qq "$kernel_package" 2>/dev/null)
    dpkg-deb -x "$VM_KERNEL_DIR"/"$kernel_package"_*.deb "$VM_KERNEL_DIR/root"
    rm -f "$VM_KERNEL_DIR"/*.deb
    depmod -b "$VM_KERNEL_DIR/root" "${kernel_package#linux-image-}"
fi
