# A Debian image that serves a file over HTTP on port 8080, built with QEMU over SSH. cloud-init
# creates the `kiln` user with the build's key and installs a host key Kiln generated.
#
#   kiln build -var base_image=$(vm-tests/base-image.sh) templates/qemu-hello
#   qemu-system-x86_64 -accel tcg -m 1024 -snapshot -display none \
#     -drive file=output/qemu-hello/hello.qcow2,if=virtio \
#     -netdev user,id=n0,hostfwd=tcp:127.0.0.1:8080-:8080 -device virtio-net,netdev=n0 &
#   curl http://127.0.0.1:8080/hello.txt

variable "base_image" {
  type        = string
  description = "The Debian base disk (qcow2) that vm-tests/base-image.sh prints."
}

variable "base_checksum" {
  type        = string
  default     = "none"
  description = "`sha256:...` of the base disk; `none` skips the check."
}

variable "communicator" {
  type        = string
  default     = "ssh"
  description = "`ssh` (cloud-init injects the build's key and host key) or `qga` (the QEMU guest agent, no network needed)."
}

variable "accelerator" {
  type        = string
  default     = "auto"
  description = "`auto`, `kvm` or `tcg` (KVM hangs guests on some hosts: use `tcg` there)."
}

source "qemu" "hello" {
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = var.base_checksum
  accelerator      = var.accelerator
  communicator     = var.communicator
  memory           = 1024
  ssh_username     = "kiln"
  ssh_timeout      = "10m"
  vm_name          = "hello.qcow2"
  output_directory = "output/qemu-hello"
}

build {
  sources = ["source.qemu.hello"]

  provisioner "file" {
    source      = "${path.root}/files/hello.txt"
    destination = "/tmp/hello.txt"
  }

  provisioner "file" {
    source      = "${path.root}/files/kiln-hello.service"
    destination = "/tmp/kiln-hello.service"
  }

  provisioner "shell" {
    inline = [
      "sudo mkdir -p /srv/hello",
      "sudo mv /tmp/hello.txt /srv/hello/hello.txt",
      "sudo mv /tmp/kiln-hello.service /etc/systemd/system/kiln-hello.service",
      "sudo systemctl enable kiln-hello.service",
    ]
  }
}
