#!/usr/bin/env bash
# Runs Kiln's whole test suite: installs what the tests need, checks formatting, builds, and runs
# every test (unit, template fixtures, CLI integration, the real-sshd suite, the Docker engine
# suite). `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# Build outputs are cached outside the clone, so a fresh clone on the same machine builds quickly.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export CARGO_TERM_COLOR=never
# The vm-tests boot real QEMU guests under TCG (about 12 minutes); KILN_VM_TESTS=0 skips them.
export KILN_VM_TESTS="${KILN_VM_TESTS:-1}"
# Fixtures panic instead of skipping when a daemon the tests need (dockerd, docker-registry, sshd)
# is missing, so CI cannot pass by testing nothing.
export CI="${CI:-1}"

cargo fmt --all --check
cargo build --workspace --all-targets --locked

log=$(mktemp)
marker=$(mktemp)
# One Docker engine for every test binary, stopped at the end (only if this script started it).
trap 'bash scripts/dockerd.sh stop; rm -f "$log" "$marker"' EXIT
bash scripts/dockerd.sh start
# grep finds nothing when there are no containers; that is not an error.
containers() { curl -sf --unix-socket /var/run/docker.sock 'http://docker/containers/json?all=1' | { grep -o '"Id":"[0-9a-f]*"' || true; } | sort; }
containers_before=$(containers)
status=0
# Tests that start daemons (sshd) each take their own port, so two threads are safe.
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"

# Nothing a test or a build made may outlive the suite: no VM, no sshd, no container, no temporary
# file.
leftovers=$(
  pgrep -a qemu-system || true
  # The test harness's sshd (its config lives in a kiln-sshd-* directory) and ssh connection
  # masters (ansible's ControlPersist) must be gone too.
  pgrep -af 'sshd .*kiln-sshd-' || true
  pgrep -af 'ssh: .*\[mux\]' || true
  comm -13 <(echo "$containers_before") <(containers) | sed 's/^/container /'
  find /tmp /var/tmp -mindepth 1 -maxdepth 1 -newer "$marker" \
    \( -name 'kiln*' -o -name 'script_*' -o -name '.tmp*' -o -name 'tmp*' \) \
    ! -path "$log" ! -name kiln-dockerd.log ! -name kiln-target ! -name kiln-cache
)
if [ -n "$leftovers" ]; then
  echo "the suite left these behind:" >&2
  echo "$leftovers" >&2
  status=1
fi
exit "$status"
