# A container image built with the `docker` builder: files and a shell provisioner through the
# docker communicator, a few `changes`, and the base image's own settings kept.
#
#   kiln build -var image=busybox:1.36 templates/docker-hello
#   docker run --rm IMAGE_ID            # prints /etc/motd
#
# The test suite builds it on a busybox image it imports itself (nothing is pulled).

variable "image" {
  type        = string
  default     = "busybox:1.36"
  description = "The base image; any image with a POSIX `/bin/sh`."
}

source "docker" "hello" {
  image  = var.image
  commit = true
  changes = [
    "LABEL org.opencontainers.image.title=kiln-hello",
    "ENV GREETING=hello",
    "CMD [\"cat\", \"/etc/motd\"]",
  ]
}

build {
  sources = ["source.docker.hello"]

  provisioner "file" {
    content     = "built by ${source.type}.${source.name} in ${build.ID}\n"
    destination = "/etc/motd"
  }

  # The contents of `files/` into /opt/hello.
  provisioner "file" {
    source      = "${path.root}/files/"
    destination = "/opt/hello"
  }

  provisioner "shell" {
    environment_vars = ["GREETING=hello"]
    inline = [
      "echo 'app:x:1234:1234::/opt/hello:/bin/sh' >> /etc/passwd",
      "echo \"$GREETING\" > /opt/hello/greeting",
      "chown 1234 /opt/hello/greeting",
    ]
  }
}
