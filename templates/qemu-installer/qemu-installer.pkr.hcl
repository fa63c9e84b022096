# An ISO install with QEMU: the installer ISO that vm-tests/installer-iso.sh builds boots to a
# GRUB prompt (BIOS or UEFI); Kiln waits for the prompt on the serial console, types the kernel
# command line with the address of its HTTP server, serves the installer a file over HTTP and
# attaches a second CD-ROM; the installer writes what it received onto the blank disk (as a tar
# archive) and powers off by itself.
#
#   kiln build -var installer_iso=$(vm-tests/installer-iso.sh) -var accelerator=tcg templates/qemu-installer
#   tar -tvf output/qemu-installer/installed.raw

variable "installer_iso" {
  type        = string
  description = "The installer ISO that vm-tests/installer-iso.sh prints."
}

variable "accelerator" {
  type        = string
  default     = "auto"
  description = "`auto`, `kvm` or `tcg` (KVM hangs guests on some hosts: use `tcg` there)."
}

variable "efi_boot" {
  type        = bool
  default     = false
  description = "Boot through UEFI (OVMF) instead of BIOS."
}

locals {
  cd_label = "KILNCD"
}

source "qemu" "installer" {
  iso_url      = var.installer_iso
  iso_checksum = "none"
  accelerator  = var.accelerator
  efi_boot     = var.efi_boot
  communicator = "none"
  disk_size    = "64M"
  memory       = 512
  format       = "raw"

  boot_wait_for = "grub>"
  boot_command = [
    "linux /vmlinuz console=ttyS0 quiet kiln.url=http://{{ .HTTPIP }}:{{ .HTTPPort }} kiln.cd=${local.cd_label}; ",
    "initrd /initrd.gz; boot<enter>",
  ]

  http_content = {
    "/payload.txt" = "installed by kiln over HTTP\n"
  }

  cd_files = ["${path.root}/files/answers.txt"]
  cd_content = {
    "kiln/label.txt" = "${local.cd_label}\n"
  }
  cd_label = local.cd_label

  vm_name          = "installed.raw"
  output_directory = "output/qemu-installer"
}

build {
  sources = ["source.qemu.installer"]

  post-processor "manifest" {
    output = "output/qemu-installer/manifest.json"
  }
}
