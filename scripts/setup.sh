#!/usr/bin/env bash
# Installs what Kiln's builds and tests need on a fresh Debian 12 machine (run as root).
# Idempotent and quick when everything is already there: apt runs only for missing packages.
set -euo pipefail

packages=(
  # The SSH communicator's tests run a real OpenSSH server on loopback.
  openssh-server openssh-client
  # The ansible provisioner runs the host's ansible-playbook.
  ansible-core
  # `kiln validate` benchmark.
  hyperfine
  # The docker builder's tests: an engine, a registry and base images made locally.
  docker.io docker-registry busybox-static mmdebstrap curl
  # The qemu builder, its seed ISOs and the vm-tests base image (vm-tests/base-image.sh).
  qemu-system-x86 qemu-utils genisoimage
  syslinux syslinux-common mtools dosfstools fdisk
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
