#!/usr/bin/env bash
# Build a local base image equivalent to python:3.11-slim (Debian bookworm, Python 3.11, pip,
# venv, CA certificates) from the machine's Debian mirror, for machines that reach no image
# registry (air-gapped sites, our CI). Needs root, debootstrap and podman (or docker).
#
#   docker/build-offline-base.sh [IMAGE]          default IMAGE: netshrink-base:bookworm
#   MIRROR=http://... docker/build-offline-base.sh  use another Debian mirror
#
# Then: podman build --build-arg BASE_IMAGE=IMAGE -f docker/cpu.Dockerfile -t netshrink:cpu .
set -euo pipefail

image="${1:-netshrink-base:bookworm}"
engine="${CONTAINER_ENGINE:-podman}"
if [ -z "${MIRROR:-}" ]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
for tool in debootstrap "$engine"; do
  command -v "$tool" >/dev/null || { echo "build-offline-base: '$tool' is not installed" >&2; exit 2; }
done

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
echo "build-offline-base: debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >/dev/null
# The package registries need the host's CA bundle for TLS (it may hold a site's own CA).
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
ln -sf python3 "$rootfs/usr/bin/python"   # python:3.11-slim has both names
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "build-offline-base: built $image"
