#!/usr/bin/env bash
# Installs what weave-router needs to build and test on a fresh Debian machine.
# Run as root. Non-interactive and idempotent: it only calls apt-get when a
# package is missing, and installs Rust with rustup only when cargo is absent.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

# iproute2/nftables/iputils-ping/procps: the network-namespace testbed.
# iperf3/ethtool: the performance harness. python3-yaml, python3-pip: manifest checks
# (kubernetes-validate comes from PyPI).
# containernetworking-plugins: the reference CNI plugins (portmap, host-local in /usr/lib/cni)
# that weave-cni is chained with in the tests; iptables: what portmap programs.
# buildah, binutils: the container image (scripts/build-image.sh; strip and readelf).
packages=(
    iproute2 nftables iperf3 ethtool procps iputils-ping
    curl ca-certificates build-essential pkg-config python3-yaml
    containernetworking-plugins iptables python3-pip buildah binutils
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "setup.sh: Debian packages present"
fi

# rustup puts cargo in ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# rustfmt and clippy are needed by .ci/run; a toolchain without them gets them added.
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            rustup component add "$c"
        fi
    done
fi

cargo --version
