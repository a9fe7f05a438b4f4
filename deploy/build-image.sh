#!/usr/bin/env bash
# Builds the cairn server image (default tag cairn:dev) from this checkout.
#
#   deploy/build-image.sh [TAG]
#
# The only network it uses is the Go module proxy (for `go build`); the
# image is FROM scratch, so nothing is pulled from a registry.
set -euo pipefail
tag="${1:-${CAIRN_IMAGE:-cairn:dev}}"
root="$(cd "$(dirname "$0")/.." && pwd)"
ctx="$(mktemp -d "${TMPDIR:-/tmp}/cairn-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT

mkdir "$ctx/data"
(cd "$root" && CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o "$ctx/cairn" ./cmd/cairn)
docker build --quiet --tag "$tag" --file "$root/deploy/Dockerfile" \
    --label org.opencontainers.image.source=github.com/cairn-db/cairn \
    --label org.opencontainers.image.revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$ctx" >/dev/null
echo "$tag"
