#!/usr/bin/env bash
# The work of templates/qemu-hello done by hand with qemu, ssh and qemu-img, timed in the same
# phases as benches/qemu.sh, so the two totals can be compared: Kiln's goal is to add no waiting
# of its own (within one second of this).
#
# Same guest, same seed, same provisioning: a qcow2 overlay on the base disk; a NoCloud seed
# that creates `kiln` with a fresh key and installs a fresh host key (as Kiln's); QEMU under TCG
# with 1 GiB and virtio disk and NIC; `ssh` retried every 0.2 s until it logs in with the host
# key pinned (the best a person can do from a shell); two `scp` uploads and the shell commands in
# one session; ACPI power-off through QMP and a wait for QEMU to exit; `qemu-img convert` and
# `sha256sum`.
#
#   benches/qemu-by-hand.sh        (needs root for the base image; prints phases and the total)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
base="$("$root/vm-tests/base-image.sh")"
files="$root/templates/qemu-hello/files"

work="$(mktemp -d)"
qemu_pid=
cleanup() {
    [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

now() { date +%s%N; }
secs() { python3 -c "print(f'{($2 - $1) / 1e9:7.2f} s')"; }

t0=$(now)
# Keys and seed (Kiln makes the same before it launches QEMU).
ssh-keygen -q -t ed25519 -N '' -f client -C kiln
ssh-keygen -q -t ed25519 -N '' -f host -C kiln
mkdir cidata
{
    echo "#cloud-config"
    echo "manage_etc_hosts: true"
    echo "users:"
    echo "  - name: kiln"
    echo "    sudo: ALL=(ALL) NOPASSWD:ALL"
    echo "    shell: /bin/bash"
    echo "    lock_passwd: true"
    echo "    ssh_authorized_keys:"
    echo "      - $(cat client.pub)"
    echo "ssh_deletekeys: true"
    echo "ssh_genkeytypes: []"
    echo "ssh_keys:"
    echo "  ed25519_private: |"
    sed 's/^/    /' host
    echo "  ed25519_public: $(cat host.pub)"
} >cidata/user-data
printf 'instance-id: by-hand-%s\nlocal-hostname: kiln-hello\n' "$$" >cidata/meta-data
genisoimage -quiet -output seed.iso -volid cidata -joliet -rock cidata
qemu-img create -q -f qcow2 -F qcow2 -b "$base" work.qcow2
echo "[127.0.0.1]:PORT $(cut -d' ' -f1,2 host.pub)" >known_hosts.template

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s/PORT/$port/" known_hosts.template >known_hosts
ssh_opts=(-q -i client -o UserKnownHostsFile=known_hosts -o StrictHostKeyChecking=yes
    -o ConnectTimeout=2 -o BatchMode=yes -p "$port")

t_launch=$(now)
qemu-system-x86_64 -nodefaults -machine pc -smp 1 -m 1024M -display none -accel tcg \
    -drive "file=work.qcow2,if=virtio,cache=writeback,format=qcow2" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net,netdev=n0 \
    -drive "file=seed.iso,media=cdrom,readonly=on" \
    -qmp "unix:$work/qmp.sock,server=on,wait=off" -serial "file:$work/console.log" &
qemu_pid=$!
until ssh "${ssh_opts[@]}" kiln@127.0.0.1 true 2>/dev/null; do
    kill -0 "$qemu_pid" || { echo "qemu exited" >&2; exit 1; }
    sleep 0.2
done
t_ready=$(now)

scp -q -i client -o UserKnownHostsFile=known_hosts -o StrictHostKeyChecking=yes -P "$port" \
    "$files/hello.txt" kiln@127.0.0.1:/tmp/hello.txt
scp -q -i client -o UserKnownHostsFile=known_hosts -o StrictHostKeyChecking=yes -P "$port" \
    "$files/kiln-hello.service" kiln@127.0.0.1:/tmp/kiln-hello.service
ssh "${ssh_opts[@]}" kiln@127.0.0.1 'set -e
    sudo mkdir -p /srv/hello
    sudo mv /tmp/hello.txt /srv/hello/hello.txt
    sudo mv /tmp/kiln-hello.service /etc/systemd/system/kiln-hello.service
    sudo systemctl enable kiln-hello.service' 2>/dev/null
t_provisioned=$(now)

python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while "return" not in json.loads(f.readline()):
        pass
PY
wait "$qemu_pid"
qemu_pid=
t_off=$(now)

qemu-img convert -O qcow2 work.qcow2 hello.qcow2.partial
sha256sum hello.qcow2.partial >/dev/null
mv hello.qcow2.partial hello.qcow2
t_end=$(now)

echo "by hand (qemu + ssh + qemu-img), same guest and seed:"
echo "keys + seed + overlay $(secs "$t0" "$t_launch")"
echo "launch -> ready       $(secs "$t_launch" "$t_ready")"
echo "provisioning          $(secs "$t_ready" "$t_provisioned")"
echo "shutdown              $(secs "$t_provisioned" "$t_off")"
echo "convert + hash        $(secs "$t_off" "$t_end")"
echo "total                 $(secs "$t0" "$t_end")"
