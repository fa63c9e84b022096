#!/usr/bin/env bash
# Builds the installer ISO the QEMU builder's ISO-install vm-tests boot, from Debian's packages
# only, and prints its path.
#
# The ISO boots through BIOS and UEFI (`grub-mkrescue`) to a GRUB prompt on the serial console,
# with no menu: the build's `boot_command` types the kernel command line, which is the point of
# the test. The kernel is Debian's; the initramfs is `busybox-static` plus the few modules it
# needs (virtio, ATA/SCSI CD-ROM, ISO 9660). Its /init is a tiny "installer": it fetches
# `payload.txt` from `kiln.url=URL` on the kernel command line (the build's HTTP server), copies
# everything from the CD-ROM labelled `kiln.cd=LABEL` (the build's `cd_files`), notes which
# firmware booted it, writes all of that as a tar archive straight onto /dev/vda, and powers off.
#
# Cached as $KILN_CACHE_DIR/installer-<sha256 of this script>.iso (default /var/tmp/kiln-cache);
# the kernel package is kept in $KILN_CACHE_DIR/debs. Needs: apt, busybox-static, grub-common,
# grub-pc-bin, grub-efi-amd64-bin, xorriso, mtools.
set -euo pipefail

cache=${KILN_CACHE_DIR:-/var/tmp/kiln-cache}
sum=$(sha256sum "$0" | cut -c1-16)
out="$cache/installer-$sum.iso"
if [ -f "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache/debs"
work=$(mktemp -d "$cache/installer-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Debian's current kernel package, downloaded once into the cache.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
deb=$(ls "$cache/debs/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  (cd "$work" && apt-get download -qq "$kpkg" >/dev/null)
  mv "$work/${kpkg}_"*.deb "$cache/debs/"
  deb=$(ls "$cache/debs/${kpkg}_"*.deb | head -n1)
fi
dpkg-deb -x "$deb" "$work/k"
version=${kpkg#linux-image-}

# The initramfs: busybox, the modules, /init.
ir="$work/initramfs"
mkdir -p "$ir"/{bin,proc,sys,dev,mnt,work}
cp /bin/busybox "$ir/bin/busybox"
mods="lib/modules/$version/kernel"
for m in drivers/virtio drivers/block/virtio_blk.ko drivers/net/virtio_net.ko \
  drivers/net/net_failover.ko net/core/failover.ko drivers/ata/libata.ko drivers/ata/ata_piix.ko \
  drivers/ata/ahci.ko drivers/ata/libahci.ko drivers/scsi/scsi_mod.ko drivers/scsi/scsi_common.ko \
  drivers/scsi/sr_mod.ko drivers/cdrom fs/isofs; do
  mkdir -p "$ir/$mods/$(dirname "$m")"
  cp -r "$work/k/$mods/$m" "$ir/$mods/$m"
done
busybox depmod -b "$ir" "$version"
cat > "$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "kiln-installer: started"
for m in virtio_pci virtio_blk virtio_net ata_piix ahci sr_mod isofs; do modprobe "$m"; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
url=$(arg kiln.url)
label=$(arg kiln.cd)
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
wget -q -O /work/payload.txt "$url/payload.txt" || echo "kiln-installer: cannot fetch $url/payload.txt"
dev=
for i in $(seq 100); do dev=$(findfs "LABEL=$label" 2>/dev/null) && break; sleep 0.1; done
mkdir -p /work/cd
[ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt && cp -r /mnt/. /work/cd/
if [ -d /sys/firmware/efi ]; then echo efi > /work/firmware; else echo bios > /work/firmware; fi
tar -C /work -cf /dev/vda .
sync
echo "kiln-installer: done"
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"

# The ISO: GRUB on the serial console and the keyboard, no menu entries (a `grub>` prompt).
iso="$work/iso"
mkdir -p "$iso/boot/grub"
cp "$work/k/boot/vmlinuz-$version" "$iso/vmlinuz"
cp "$work/initrd.gz" "$iso/initrd.gz"
cat > "$iso/boot/grub/grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
EOF
grub-mkrescue -o "$work/installer.iso" "$iso" 2>/dev/null
mv "$work/installer.iso" "$out"
echo "$out"
