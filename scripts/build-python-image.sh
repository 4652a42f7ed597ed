#!/usr/bin/env bash
# Build the Python image the end-to-end tests run the Codabench examples on,
# as a single-layer OCI image layout tarball (oci-archive) that
# `compute-worker import` accepts:
#
#   scripts/build-python-image.sh OUT.tar
#   compute-worker import OUT.tar      # -> localhost/codabench-python:test
#
# Debian bookworm (debootstrap, variant minbase) with python3, numpy, scipy,
# scikit-learn, pandas, psutil, yaml and a `python` -> python3 symlink.
#
# Runs as root (debootstrap needs it). Needs debootstrap, gzip, sha256sum and
# access to the Debian mirror (scripts/dev-setup.sh installs debootstrap).
# The result is cached under $COMPUTE_WORKER_TEST_CACHE (default
# /var/cache/compute-worker-tests) as python-<hash of this script>.tar, so a
# rerun only copies it; editing this script builds a new one. Concurrent runs
# wait for each other (flock) and build once.
set -euo pipefail

IMAGE_NAME=localhost/codabench-python:test
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES=python3,python3-numpy,python3-scipy,python3-sklearn,python3-pandas,python3-psutil,python3-yaml

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT.tar" >&2
  exit 2
fi
out=$1
if [ "$(id -u)" != 0 ]; then
  echo "$0 must run as root (debootstrap needs it)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "debootstrap is missing: run scripts/dev-setup.sh (or apt-get install debootstrap)" >&2
  exit 1
}

cache_dir=${COMPUTE_WORKER_TEST_CACHE:-/var/cache/compute-worker-tests}
hash=$(sha256sum "$0" | cut -c1-16)
cached=$cache_dir/python-$hash.tar
mkdir -p "$cache_dir"

deliver() {
  if [ "$(realpath -m "$out")" != "$(realpath "$cached")" ]; then
    cp "$cached" "$out.part.$$"
    mv "$out.part.$$" "$out"
  fi
  echo "$out: $IMAGE_NAME ($(du -h "$cached" | cut -f1), cached as $cached)"
}

exec 9>"$cached.lock"
flock 9
if [ -s "$cached" ]; then
  deliver
  exit 0
fi

work=$(mktemp -d /var/tmp/cw-python-image.XXXXXX)
cleanup() {
  # debootstrap may leave mounts behind if it fails half way.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m" || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$(date +%s)
echo "== debootstrap $SUITE ($PACKAGES) into $work/rootfs"
debootstrap --variant=minbase --include="$PACKAGES" \
  "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  echo "debootstrap failed (full log above is the tail of $work/debootstrap.log)" >&2
  exit 1
}

root=$work/rootfs
ln -sf python3 "$root/usr/bin/python"
# What an image does not need: package caches, docs, device nodes (the
# sandbox provides /dev).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
  "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt/* \
  "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/tmp/*
# A quick check in the new tree (psutil reads /proc when imported).
unshare --mount --pid --fork --mount-proc="$root/proc" \
  chroot "$root" python -c 'import sklearn, pandas, numpy, scipy, psutil, yaml; print("imports ok")'

echo "== packing $IMAGE_NAME"
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
blob() { # FILE -> moves it into the layout, prints its digest
  local d
  d=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$layout/blobs/sha256/$d"
  echo "sha256:$d"
}
tar -C "$root" --numeric-owner --sort=name -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n "$work/layer.tar"
layer_size=$(stat -c %s "$work/layer.tar.gz")
layer_digest=$(blob "$work/layer.tar.gz")

arch=$(dpkg --print-architecture)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"$created",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],
           "Cmd":["python3"]},
 "rootfs":{"type":"layers","diff_ids":["$diff_id"]},
 "history":[{"created":"$created","created_by":"scripts/build-python-image.sh (debootstrap $SUITE minbase + $PACKAGES)"}]}
EOF
config_size=$(stat -c %s "$work/config.json")
config_digest=$(blob "$work/config.json")

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$layer_digest","size":$layer_size}]}
EOF
manifest_size=$(stat -c %s "$work/manifest.json")
manifest_digest=$(blob "$work/manifest.json")

echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
 "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest_digest","size":$manifest_size,
               "annotations":{"org.opencontainers.image.ref.name":"$IMAGE_NAME"}}]}
EOF

tar -C "$layout" -cf "$cached.part" oci-layout index.json blobs
mv "$cached.part" "$cached"
echo "built in $(($(date +%s) - start)) s"
deliver
