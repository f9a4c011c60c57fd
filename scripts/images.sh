#!/usr/bin/env bash
# Builds Sluice's container images without a Docker engine: a static binary
# per image (x86_64-unknown-linux-musl, Cargo profile `image`), then one
# FROM-scratch image per binary from its Containerfile (operator/,
# gateway/, runtime-wasm/) with buildah (vfs storage, chroot isolation),
# tagged REGISTRY/sluice-<binary>:TAG. With --push, pushes them.
#
#   scripts/images.sh [--registry REGISTRY] [--tag TAG] [--push] [--insecure]
#
# REGISTRY defaults to ghcr.io/sluice-dev, TAG to the workspace version
# (the Helm chart's appVersion). --insecure pushes over plain HTTP without
# TLS verification (a registry on loopback). Images are kept in buildah
# storage under $SLUICE_CONTAINERS (default .sluice/containers, git-ignored),
# not the system's. Installs buildah, musl-tools and the Rust musl target
# when missing. Prints each image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."

registry=ghcr.io/sluice-dev
tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
push=false
tls_verify=true
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --push) push=true; shift ;;
    --insecure) tls_verify=false; shift ;;
    *) echo "usage: $0 [--registry REGISTRY] [--tag TAG] [--push] [--insecure]" >&2; exit 2 ;;
  esac
done

if ! command -v buildah >/dev/null || ! command -v musl-gcc >/dev/null || [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then
  echo "== installing buildah, musl-tools and ca-certificates"
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends buildah musl-tools ca-certificates >/dev/null
fi
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

# The gateway is built for NATS mode only: local mode (wasmtime inside the
# gateway) is for a laptop, not a cluster, and would double its size.
echo "== building static binaries ($target)"
cargo build --locked --profile image --target "$target" -p sluice-operator -p sluice-runtime
cargo build --locked --profile image --target "$target" -p sluice-gateway --no-default-features

containers=${SLUICE_CONTAINERS:-$PWD/.sluice/containers}
mkdir -p "$containers"
buildah=(buildah --root "$containers/storage" --runroot "$containers/run" --storage-driver vfs)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for image in operator:sluice-operator gateway:sluice-gateway runtime-wasm:sluice-runtime; do
  crate=${image%%:*}
  binary=${image##*:}
  name="$registry/$binary:$tag"
  rm -f "$context"/*
  cp "${CARGO_TARGET_DIR:-target}/$target/image/$binary" "$context/"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  echo "== building $name"
  "${buildah[@]}" build --quiet --isolation chroot \
    --label "org.opencontainers.image.title=$binary" \
    --label "org.opencontainers.image.version=$tag" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    -f "$crate/Containerfile" -t "$name" "$context" >/dev/null
  size=$("${buildah[@]}" images --format '{{.Size}}' "$name" 2>/dev/null || true)
  echo "IMAGE $name ${size:-?}"
  if $push; then
    "${buildah[@]}" push --quiet --tls-verify="$tls_verify" "$name" "docker://$name"
  fi
done
