#!/usr/bin/env bash
# Times the phases of a docker build through `kiln build -json`: a busybox base, a shell
# provisioner of five commands, one file upload, commit, tag and push to a local registry that
# already holds the base layer. Prints the median of each phase over N builds (step durations
# from the `step_finished` events) and the median wall-clock total of `kiln build`.
#
#   benches/docker.sh [N]          (N defaults to 5; KILN=path/to/kiln to skip the build)
#
# Starts the engine with `scripts/dockerd.sh` if none answers (and stops it again), and a
# registry on a free loopback port that it stops at exit.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-5}"
sock=/var/run/docker.sock

if [[ -z "${KILN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin kiln
    KILN="${CARGO_TARGET_DIR:-$root/target}/release/kiln"
fi

work="$(mktemp -d)"
started_engine=0
registry_pid=""
cleanup() {
    [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
    [[ "$started_engine" == 1 ]] && bash "$root/scripts/dockerd.sh" stop
    rm -rf "$work"
}
trap cleanup EXIT

api() { curl -sf --unix-socket "$sock" "$@"; }
if ! api http://docker/_ping >/dev/null 2>&1; then
    bash "$root/scripts/dockerd.sh" start
    started_engine=1
fi

# The registry, on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
# Ready when it answers `/v2/` (within 10 s), or the bench stops with its log.
ready=""
for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && { ready=1; break; }
    kill -0 "$registry_pid" 2>/dev/null || break
    sleep 0.05
done
if [[ -z "$ready" ]]; then
    echo "docker-registry did not answer on 127.0.0.1:$port; its log:" >&2
    cat "$work/registry.log" >&2
    exit 1
fi

# The base image: busybox, imported (nothing is pulled).
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$work/rootfs/bin/$applet"
done
chmod 1777 "$work/rootfs/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
api -X POST -H 'Content-Type: application/x-tar' --data-binary "@$work/rootfs.tar" \
    "http://docker/images/create?fromSrc=-&repo=kiln-bench/busybox&tag=1" >/dev/null

head -c 65536 /dev/urandom >"$work/upload.bin"
mkdir -p "$work/template"
cat >"$work/template/bench.pkr.hcl" <<HCL
source "docker" "bench" {
  image  = "kiln-bench/busybox:1"
  commit = true
}
build {
  sources = ["source.docker.bench"]
  provisioner "shell" {
    inline = ["echo one", "mkdir -p /opt/bench", "echo two > /opt/bench/two", "ls /opt/bench", "uname -a"]
  }
  provisioner "file" {
    source      = "$work/upload.bin"
    destination = "/opt/bench/upload.bin"
  }
  post-processors {
    post-processor "docker-tag" {
      repository = "127.0.0.1:$port/kiln/bench"
      tags       = ["1"]
    }
    post-processor "docker-push" {}
  }
}
HCL

# One warm-up build puts the base layer in the registry, as in the reference figures.
"$KILN" build -json "$work/template" >"$work/warmup.jsonl"

for ((i = 0; i < runs; i++)); do
    start=$(date +%s%N)
    "$KILN" build -json "$work/template" >"$work/run-$i.jsonl"
    end=$(date +%s%N)
    echo $(((end - start) / 1000000)) >"$work/run-$i.total"
done

python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
phases = {"container start": "start container", "provisioning": "provision",
          "commit": "commit", "tag": "docker-tag", "push": "docker-push"}
times = {name: [] for name in phases}
totals = []
for i in range(runs):
    for line in open(f"{work}/run-{i}.jsonl"):
        event = json.loads(line)
        if event.get("type") != "step_finished":
            continue
        for name, step in phases.items():
            if event["step"] == step or (step.startswith("docker-") and step in event["step"]):
                times[name].append(event["duration_ms"])
    totals.append(int(open(f"{work}/run-{i}.total").read()))
print(f"docker build phases, median of {runs} runs (ms):")
for name, values in times.items():
    print(f"  {name:<16} {statistics.median(values):7.0f}" if values else f"  {name:<16}   (none)")
print(f"  {'total (wall)':<16} {statistics.median(totals):7.0f}")
PY
# Remove every image the builds made (each build's tag moved on to the next one).
python3 - "$work" <<'PY' | while read -r id; do api -X DELETE "http://docker/images/$id?force=1" >/dev/null || true; done
import glob, json, sys
ids = set()
for path in glob.glob(f"{sys.argv[1]}/*.jsonl"):
    for line in open(path):
        event = json.loads(line)
        if event.get("type") == "artifact_produced":
            ids.add(event["artifact"]["id"])
print("\n".join(sorted(i for i in ids if i.startswith("sha256:"))))
PY
api -X DELETE "http://docker/images/kiln-bench/busybox:1?force=1" >/dev/null || true
