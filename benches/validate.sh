#!/usr/bin/env bash
# Times `kiln validate templates/hello`: with hyperfine when installed, else a loop of N runs.
# Prints the mean time per run in milliseconds.
#
#   benches/validate.sh [N]        (N defaults to 50; KILN=path/to/kiln to skip the build)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-50}"
template="$root/templates/hello"

if [[ -z "${KILN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin kiln
    target="${CARGO_TARGET_DIR:-$root/target}"
    KILN="$target/release/kiln"
fi

"$KILN" validate "$template" >/dev/null

if command -v hyperfine >/dev/null; then
    json="$(mktemp)"
    trap 'rm -f "$json"' EXIT
    hyperfine -N --warmup 3 --runs "$runs" --export-json "$json" --style none \
        "'$KILN' validate '$template'" >/dev/null
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("kiln validate: %.2f ms per run (hyperfine, %d runs, min %.2f ms)" % (r["mean"] * 1000, len(r["times"]), r["min"] * 1000))' "$json"
else
    start=$(date +%s%N)
    for ((i = 0; i < runs; i++)); do
        "$KILN" validate "$template" >/dev/null
    done
    end=$(date +%s%N)
    awk -v ns=$((end - start)) -v n="$runs" \
        'BEGIN { printf "kiln validate: %.2f ms per run (%d runs)\n", ns / n / 1e6, n }'
fi
