#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails if any target crashes.
#
#   scripts/fuzz.sh [seconds per target]      (default 30)
#
# New inputs go to fuzz/corpus/<target> (ignored by git); the committed seeds in
# fuzz/seeds/<target> (real captured datagrams and mesh streams) are read as well.
# A crash leaves its input in fuzz/artifacts/<target>/; rerun it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [seconds per target]" >&2
    exit 2
    ;;
esac

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...); only a stable toolchain
# is installed, and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1

mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found in fuzz/" >&2
    exit 1
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    echo "==== fuzz $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t")
    if [ -d "fuzz/seeds/$t" ]; then
        dirs+=("fuzz/seeds/$t")
    fi
    log="$(mktemp)"
    if cargo fuzz run --fuzz-dir fuzz "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        2>&1 | tee "$log"; then
        runs="$(grep -o 'Done [0-9]* runs' "$log" | tail -n1 || true)"
        summary+=("$t: ok, ${runs:-no run count}")
    else
        failed+=("$t")
        summary+=("$t: FAILED (see fuzz/artifacts/$t)")
    fi
    rm -f "$log"
done

echo "==== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
