#!/usr/bin/env bash
# Starts or stops the Docker engine the test suite uses: `dockerd.sh start` runs
# `dockerd --iptables=false --bridge=none` unless an engine already answers on the socket, and
# waits until it answers `GET /_ping`; `dockerd.sh stop` stops the daemon `start` started (and
# nothing else), waiting until it has exited.
set -euo pipefail

sock=/var/run/docker.sock
marker=/var/run/kiln-dockerd.pid
log=/var/tmp/kiln-dockerd.log

ping() { curl -sf --max-time 2 --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1; }

case "${1:-}" in
start)
  ping && exit 0
  dockerd --iptables=false --bridge=none >"$log" 2>&1 &
  echo $! >"$marker"
  # Poll readiness with a deadline (dockerd answers in about half a second).
  for _ in $(seq 600); do
    ping && exit 0
    kill -0 "$(cat "$marker")" 2>/dev/null || break
    sleep 0.1
  done
  echo "dockerd did not become ready; its log ($log):" >&2
  tail -n 30 "$log" >&2
  exit 1
  ;;
stop)
  [ -f "$marker" ] || exit 0
  pid=$(cat "$marker")
  rm -f "$marker"
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.1
  done
  echo "dockerd $pid did not stop within 30 s" >&2
  exit 1
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
