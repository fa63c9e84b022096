#!/usr/bin/env bash
# Times a build of templates/qemu-hello under TCG and prints its phases from Kiln's JSON events:
# before launch (verify, overlay, keys, seed), start (QEMU launched and its QMP negotiated),
# guest ready (SSH login), provisioning, shutdown, convert+hash, and the total. Then, unless
# BY_HAND=0, does the same work by hand (benches/qemu-by-hand.sh) and prints the difference:
# Kiln's goal is to add no waiting of its own.
#
#   benches/qemu.sh            (KILN=path/to/kiln to skip the build; needs root for the base image)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${KILN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin kiln
    KILN="${CARGO_TARGET_DIR:-$root/target}/release/kiln"
fi
base="$("$root/vm-tests/base-image.sh")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s%N)
KILN_QEMU_ACCELERATOR=tcg "$KILN" build --json -var "base_image=$base" "$root/templates/qemu-hello" >events.jsonl
total_ms=$((($(date +%s%N) - start) / 1000000))

python3 - "$total_ms" events.jsonl <<'PY'
import json, sys
total_ms = int(sys.argv[1])
steps = {}
for line in open(sys.argv[2]):
    e = json.loads(line)
    if e.get("type") == "step_finished":
        steps[e["step"]] = e["duration_ms"]
before = ("verify source", "create output directory", "create runtime directory", "create disk", "make cloud-init seed")
phases = [
    ("before launch", sum(steps.get(s, 0) for s in before)),
    ("start", steps.get("launch vm", 0)),
    ("guest ready", steps.get("wait for ssh", 0) + steps.get("wait for guest agent", 0)),
    ("provisioning", steps.get("provision", 0)),
    ("shutdown", steps.get("shut down", 0)),
    ("convert + hash", steps.get("convert disk", 0)),
]
print("kiln build of templates/qemu-hello:")
for name, ms in phases:
    print(f"{name:16} {ms / 1000:7.2f} s")
print(f"{'total':16} {total_ms / 1000:7.2f} s")
PY

if [[ "${BY_HAND:-1}" != 0 ]]; then
    echo
    hand="$("$root/benches/qemu-by-hand.sh")"
    echo "$hand"
    hand_total=$(awk '/^total/ {print $2}' <<<"$hand")
    python3 -c "print(f'kiln - by hand:  {$total_ms / 1000 - $hand_total:+7.2f} s')"
fi
