#!/usr/bin/env bash
# Makes the Debian base image for the docker tests: a bookworm minbase rootfs from `mmdebstrap`,
# cached under /var/tmp/kiln-cache/ and imported as `kiln-test/debian:HASH`, HASH being this
# script's own hash (so changing the recipe makes a new image; nothing is ever "latest").
# Prints the image name. Needs a running engine (`scripts/dockerd.sh start`).
set -euo pipefail

hash=$(sha256sum "$0" | cut -c1-12)
image="kiln-test/debian:$hash"
cache=/var/tmp/kiln-cache
tarball="$cache/debian-bookworm-minbase-$hash.tar"
sock=/var/run/docker.sock
api() { curl -sf --unix-socket "$sock" "$@"; }

if api "http://docker/images/$image/json" >/dev/null; then
  echo "$image"
  exit 0
fi

mkdir -p "$cache"
if [ ! -f "$tarball" ]; then
  # A fixed SOURCE_DATE_EPOCH makes mmdebstrap's output bit-identical across runs.
  SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --variant=minbase --format=tar bookworm "$tarball.part"
  mv "$tarball.part" "$tarball"
fi

# `-T` streams the file (`--data-binary @file` would read it all into memory first).
api -X POST -H 'Content-Type: application/x-tar' -T "$tarball" \
  "http://docker/images/create?fromSrc=-&repo=kiln-test/debian&tag=$hash&changes=CMD%20%5B%22bash%22%5D" \
  | grep -q '"status"' || { echo "importing $image failed" >&2; exit 1; }
echo "$image"
