#!/usr/bin/env bash
# Runs Kiln's whole test suite: installs what the tests need, checks formatting, builds, and runs
# every test (unit, template fixtures, CLI integration, the real-sshd suite). `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# Build outputs are cached outside the clone, so a fresh clone on the same machine builds quickly.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export CARGO_TERM_COLOR=never

cargo fmt --all --check
cargo build --workspace --all-targets --locked
# Tests that start daemons share ports and processes: run them one test binary at a time.
cargo test --workspace --locked -- --test-threads=2
