#!/usr/bin/env bash
# Builds the Debian bookworm base disk the QEMU builder's vm-tests boot, from Debian's packages
# only, without loop devices or mounts, and prints its path.
#
# The disk boots through SeaBIOS (syslinux on a small FAT partition, root on ext4 labelled
# `kilnroot`) and has cloud-init (NoCloud only), openssh-server, qemu-guest-agent, busybox and
# sudo. The NIC gets DHCP from systemd-networkd; the serial console is ttyS0.
#
# Cached as $KILN_CACHE_DIR/base-<sha256 of this script>.qcow2 (default /var/tmp/kiln-cache):
# a second run prints the cached path at once. The .debs are kept in $KILN_CACHE_DIR/debs.
# Packages come from mmdebstrap's default mirrors for the release (with updates and security).
# Needs root and: mmdebstrap syslinux syslinux-common mtools dosfstools fdisk qemu-img.
set -euo pipefail

cache=${KILN_CACHE_DIR:-/var/tmp/kiln-cache}
sum=$(sha256sum "$0" | cut -c1-16)
out="$cache/base-$sum.qcow2"
if [ -f "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache/debs"

work=$(mktemp -d "$cache/base-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir "$root"

packages=(
  linux-image-amd64 initramfs-tools systemd-sysv udev dbus kmod e2fsprogs
  openssh-server qemu-guest-agent cloud-init cloud-guest-utils
  busybox sudo iproute2 netbase procps
)

# A fixed SOURCE_DATE_EPOCH keeps the tree reproducible for the same package versions.
export SOURCE_DATE_EPOCH=1700000000
mmdebstrap --mode=root --format=directory --variant=apt \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$cache/debs' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$cache/debs'" \
  --customize-hook='echo kiln-base > "$1/etc/hostname"' \
  --customize-hook='echo "LABEL=kilnroot / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"' \
  --customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/50-dhcp.network"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
  --customize-hook='printf "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n" > "$1/etc/cloud/cloud.cfg.d/90-kiln.cfg"' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  bookworm "$root" >&2

# sshd needs host keys when cloud-init does not supply them: generate at first boot.
cat > "$root/etc/systemd/system/kiln-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate missing SSH host keys
Before=ssh.service
After=cloud-init.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/kiln-ssh-host-keys.service \
  "$root/etc/systemd/system/multi-user.target.wants/kiln-ssh-host-keys.service"

# Disk layout (MiB): 1 MiB gap | 64 MiB FAT boot | root up to 3 GiB.
mib=$((1024 * 1024))
boot_start=1 boot_size=64 disk_size=3072
root_start=$((boot_start + boot_size))
root_size=$((disk_size - root_start))
disk="$work/disk.raw"
truncate -s "${disk_size}M" "$disk"
sfdisk --quiet "$disk" <<EOF
label: dos
start=$((boot_start * 2048)), size=$((boot_size * 2048)), type=c, bootable
start=$((root_start * 2048)), size=$((root_size * 2048)), type=83
EOF

mkfs.ext4 -q -F -L kilnroot -d "$root" -E offset=$((root_start * mib)) "$disk" "$((root_size * 1024))k"

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
cat > "$work/syslinux.cfg" <<'EOF'
DEFAULT linux
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=kilnroot ro console=tty0 console=ttyS0,115200n8
EOF
boot="$work/boot.fat"
mkfs.fat -C "$boot" $((boot_size * 1024)) >/dev/null
mcopy -i "$boot" "$kernel" ::/vmlinuz
mcopy -i "$boot" "$initrd" ::/initrd.img
mcopy -i "$boot" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$boot"
dd if="$boot" of="$disk" bs=1M seek="$boot_start" conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none

qemu-img convert -O qcow2 "$disk" "$work/base.qcow2"
mv "$work/base.qcow2" "$out"
echo "$out"
