# Provision an existing machine over SSH with the `null` builder: no machine is created, the
# provisioners run against the host given by the variables below.
#
#   kiln build \
#     -var host=192.0.2.10 -var username=admin \
#     -var private_key_file="$HOME/.ssh/id_ed25519" \
#     -var host_key_fingerprint="$(ssh-keygen -l -E sha256 -f host_key.pub | cut -d' ' -f2)" \
#     templates/ssh-null
#
# Without `host_key_fingerprint` the host key is trusted on first use and its fingerprint shown.

variable "host" {
  type        = string
  default     = "127.0.0.1"
  description = "Address of the machine to provision."
}

variable "port" {
  type    = number
  default = 22
}

variable "username" {
  type    = string
  default = "root"
}

variable "private_key_file" {
  type        = string
  default     = null
  description = "Private key to log in with; either this or `password`."
}

variable "password" {
  type      = string
  default   = null
  sensitive = true
}

variable "host_key_fingerprint" {
  type        = string
  default     = null
  description = "The host key's `SHA256:...` fingerprint, as `ssh-keygen -l` prints it."
}

variable "output_dir" {
  type    = string
  default = "output"
}

source "null" "existing" {
  communicator             = "ssh"
  ssh_host                 = var.host
  ssh_port                 = var.port
  ssh_username             = var.username
  ssh_private_key_file     = var.private_key_file
  ssh_password             = var.password
  ssh_host_key_fingerprint = var.host_key_fingerprint
  ssh_timeout              = "1m"
}

build {
  sources = ["source.null.existing"]

  provisioner "shell" {
    environment_vars = ["GREETING=hello from kiln"]
    inline = [
      "echo \"$GREETING on $(uname -n)\"",
      "mkdir -p /tmp/kiln-ssh-null",
    ]
  }

  provisioner "file" {
    content     = "provisioned by ${source.name} as ${build.User}\n"
    destination = "/tmp/kiln-ssh-null/provisioned.txt"
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/kiln-ssh-null/provisioned.txt"
    destination = "${var.output_dir}/"
  }

  provisioner "breakpoint" {
    note = "the machine is provisioned; inspect it before the build ends"
  }

  # The "machine" is an existing host: leave nothing on it.
  provisioner "shell" {
    inline = ["rm -rf /tmp/kiln-ssh-null"]
  }
}
