#!/usr/bin/env bash
# Builds hfmerge's container image as a tarball, with no daemon and nothing pulled from
# a registry, reproducibly: the same commit (and Go release) gives the same bytes.
#
#   scripts/image.sh [OUT]     # default ./hfmerge-image.tar; prints "sha256  OUT"
#
# The tarball is an OCI image layout (oci-layout, index.json, blobs/sha256/…) with a
# docker-archive manifest.json over the same blobs, so `docker load`, `podman load`,
# `crane push` and `skopeo copy oci-archive:…`/`docker-archive:…` all take it.
# GOARCH picks the architecture (default: this machine's); SOURCE_DATE_EPOCH overrides
# the timestamps (default: the commit's time); HFMERGE_VERSION the version (default: the
# exact tag of HEAD, else devel-<rev>, with -dirty for uncommitted changes, as
# hfmerge's own version reads a checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-hfmerge-image.tar}
case $out in /*) ;; *) out=$PWD/$out ;; esac

revision=$(git rev-parse HEAD)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
dirty=
if [ -n "$(git status --porcelain)" ]; then dirty=-dirty; fi
version=${HFMERGE_VERSION:-$(git describe --tags --exact-match HEAD 2>/dev/null || echo "devel-${revision:0:12}")$dirty}
arch=${GOARCH:-$(go env GOARCH)}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SECONDS=0
# A static binary (no cgo), no build paths (-trimpath), no build id, the version
# stamped by -X. No VCS stamping (-buildvcs=false): the go command stamps a clone but not
# a git worktree (it looks for a .git directory), nor a tree without .git, so the bytes
# would depend on how the commit was checked out. GOFLAGS from the environment (say
# -race) would change the bytes too, so it is emptied, and the CPU level is pinned to
# Go's default.
env GOFLAGS= CGO_ENABLED=0 GOOS=linux GOARCH="$arch" GOAMD64=v1 GOARM64=v8.0 \
	go build -trimpath -buildvcs=false \
	-ldflags "-s -w -buildid= -X github.com/hfmerge/hfmerge.version=$version" \
	-o "$tmp/hfmerge" ./cmd/hfmerge
# The image writer runs here, whatever GOOS and GOARCH the image is for.
(cd scripts/image && env -u GOOS -u GOARCH GOFLAGS= go run . -binary "$tmp/hfmerge" -out "$out" -version "$version" \
	-revision "$revision" -created "$epoch" -arch "$arch")

echo "image: hfmerge $version linux/$arch, $(stat -c %s "$out") bytes, built in ${SECONDS} s" >&2
sha256sum "$out"
