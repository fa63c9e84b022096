#!/usr/bin/env bash
# SSH communicator benchmark against a local OpenSSH server that the test kit starts on a
# loopback port: connect and log in, 100 inline commands over one connection (per-command
# latency), a 1,000-file tree up and down as one tar stream and one 64 MiB file (throughput).
# The code is crates/kiln-comm/benches/ssh.rs; this script is the same as
#
#   cargo bench -p kiln-comm --bench ssh
#
# Needs Debian's openssh-server (scripts/setup.sh installs it) and root, for the server's
# privilege separation and the test user.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec cargo bench --quiet --manifest-path "$root/Cargo.toml" -p kiln-comm --bench ssh
