# Kiln's first example: two machine-less builds that run in parallel, each writing a greeting
# with a local shell, and a manifest that records both.
#
#   kiln build templates/hello
#   cat output/hello/first.txt output/hello/manifest.json

variable "output_dir" {
  type        = string
  default     = "output/hello"
  description = "Directory the builds write into, relative to the current directory."
}

variable "greeting" {
  type        = string
  default     = "Hello"
  description = "How to greet."
}

variable "api_token" {
  type        = string
  default     = "not-a-real-token-42"
  sensitive   = true
  description = "A stand-in secret: Kiln shows it as <sensitive> in its output."
}

locals {
  message = "${var.greeting} from Kiln"
}

source "null" "first" {
  communicator = "none"
}

source "null" "second" {
  communicator = "none"
}

build {
  name    = "hello"
  sources = ["source.null.first", "source.null.second"]

  provisioner "shell-local" {
    environment_vars = [
      "MESSAGE=${local.message}",
      "API_TOKEN=${var.api_token}",
    ]
    inline = [
      "mkdir -p '${var.output_dir}'",
      "echo \"$MESSAGE, build $PACKER_BUILD_NAME ($KILN_BUILD_NAME)\" > '${var.output_dir}/${source.name}.txt'",
      "echo \"wrote ${var.output_dir}/${source.name}.txt with token $API_TOKEN\"",
    ]
  }

  post-processor "manifest" {
    output     = "${var.output_dir}/manifest.json"
    strip_path = true
    custom_data = {
      message = local.message
    }
  }
}
