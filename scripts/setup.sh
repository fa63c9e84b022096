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
  # ISO installs: UEFI firmware, and the installer ISO of vm-tests/installer-iso.sh.
  ovmf grub-common grub-pc-bin grub-efi-amd64-bin xorriso
)

missing() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# Twice: installing one package can remove another (Debian's qemu-system-x86 7.2 replaces a
# newer preinstalled qemu-utils), which the second round puts back in a matching version.
for round in 1 2; do
  mapfile -t todo < <(missing)
  [ "${#todo[@]}" -eq 0 ] && break
  echo "setup: installing ${todo[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ "$round" = 1 ] && apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${todo[@]}" >/dev/null
done
mapfile -t todo < <(missing)
if [ "${#todo[@]}" -gt 0 ]; then
  echo "setup: still missing after installing: ${todo[*]}" >&2
  exit 1
fi
