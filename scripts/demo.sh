#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root), builds weave-router in release mode, and runs the
# three-host demo: three routers in network namespaces form a mesh from a chain of peers,
# weave-cni attaches two pods per host (as a container runtime would), the pods ping each
# other across the sleeve, and one TCP stream between pods on host1 and host3 is measured.
# Extra arguments go to `weave-perf demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/weave-perf" demo --router-bin "$target_dir/release/weave-router" "$@"
