#!/usr/bin/env bash
# CI check of the container image (called from .ci/run): the image tool's tests; the
# tarball built twice, the second time from a fresh clone with an empty Go build cache,
# to the same bytes;
# then, with no container runtime, the image's layer extracted by the system tar and
# hfmerge run from that filesystem in a chroot, as the image's user with the image's
# environment: `hfmerge version` must print the version the image is labelled with, and
# a merge of testdata must give the same shards and index as the host's build. The
# Dockerfile is linted. Needs Go, git, GNU tar, chroot, and npm for the lint.
# As root the chroot runs as the image's non-root user (chroot --userspec); otherwise in
# a user namespace (unshare -r) as the namespace's root, which this script says.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd scripts/image && GOFLAGS= go vet ./... && GOFLAGS= go test -count=1 ./...)
# The Dockerfile cannot be built here (no daemon, no registry): it is linted by
# dockerfile-utils, pinned in scripts/image/dockerlint, and compared with this image by
# scripts/image/dockerfile_test.go above.
(cd scripts/image/dockerlint && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
	node_modules/.bin/dockerfile-utils lint ../../../Dockerfile) ||
	{ echo "image-check: Dockerfile lint failed" >&2; exit 1; }
echo "image-check: Dockerfile lints clean"

scripts/image.sh "$work/a.tar"
# The second build shares nothing with the first but the commit and the Go release: a
# fresh clone at another path, an empty build cache. With uncommitted changes a clone
# would lack them, so then it builds here, with the empty cache only.
if [ -z "$(git status --porcelain)" ]; then
	git clone -q "$PWD" "$work/src"
	git -C "$work/src" checkout -q --detach "$(git rev-parse HEAD)"
	echo "image-check: second build from a fresh clone in $work/src with an empty GOCACHE"
	GOCACHE="$work/gocache" "$work/src/scripts/image.sh" "$work/b.tar"
else
	echo "image-check: uncommitted changes: second build in this checkout, with an empty GOCACHE"
	GOCACHE="$work/gocache" scripts/image.sh "$work/b.tar"
fi
if ! cmp -s "$work/a.tar" "$work/b.tar"; then
	echo "image-check: two builds of the same commit differ:" >&2
	sha256sum "$work/a.tar" "$work/b.tar" >&2
	exit 1
fi
echo "image-check: built twice to the same bytes: $(sha256sum <"$work/a.tar" | cut -d' ' -f1), $(stat -c %s "$work/a.tar") bytes"

# What the image says about itself, after checking its digests and both manifests.
envs=() layers=() entrypoint=() user= version=
while read -r key value; do
	case $key in
	env) envs+=("$value") ;;
	layer) layers+=("$value") ;;
	entrypoint) entrypoint+=("$value") ;;
	user) user=$value ;;
	version) version=$value ;;
	esac
done < <(cd scripts/image && GOFLAGS= go run . -check "$work/a.tar")
[ ${#layers[@]} -gt 0 ] && [ ${#entrypoint[@]} -gt 0 ] && [ -n "$user" ] && [ -n "$version" ] ||
	{ echo "image-check: the check printed no layer, entrypoint, user or version" >&2; exit 1; }

mkdir "$work/oci" "$work/rootfs"
tar -xf "$work/a.tar" -C "$work/oci"
for l in "${layers[@]}"; do tar -xzf "$work/oci/$l" -C "$work/rootfs"; done
mkdir "$work/rootfs/data"
cp -r testdata/tiny-llama testdata/tiny-lora "$work/rootfs/data/"

chroot_bin=$(command -v chroot)
if [ "$(id -u)" = 0 ]; then
	run=("$chroot_bin" --userspec="$user" "$work/rootfs")
	echo "image-check: running the image's ${entrypoint[*]} in a chroot as $user"
else
	run=("$(command -v unshare)" -r "$chroot_bin" "$work/rootfs")
	echo "image-check: not root: running the image's ${entrypoint[*]} in a chroot inside a user namespace (unshare -r), as its root, not as $user"
fi
inimage() { env -i "${envs[@]}" "${run[@]}" "${entrypoint[@]}" "$@"; }

got=$(inimage version)
echo "image-check: in the image: $got"
read -r _ gotversion _ <<<"$got"
if [ "$gotversion" != "$version" ]; then
	echo "image-check: the binary says version $gotversion, the image's label $version" >&2
	exit 1
fi

inimage merge --base /data/tiny-llama --adapter /data/tiny-lora --out /home/nonroot/merged
merged=$work/rootfs/home/nonroot/merged
if [ "$(id -u)" = 0 ] && [ "$(stat -c %u:%g "$merged")" != "$user" ]; then
	echo "image-check: the merge output is owned by $(stat -c %u:%g "$merged"), not $user" >&2
	exit 1
fi
# The reference: the same merge by a build of this checkout on the host.
go build -o "$work/hfmerge-host" ./cmd/hfmerge
"$work/hfmerge-host" merge --base testdata/tiny-llama --adapter testdata/tiny-lora --out "$work/ref" >/dev/null
n=0
for f in "$work/ref"/*.safetensors "$work/ref"/*.index.json; do
	[ -e "$f" ] || continue
	cmp "$f" "$merged/$(basename "$f")" || { echo "image-check: $(basename "$f") differs from the host's merge" >&2; exit 1; }
	n=$((n + 1))
done
[ "$n" -ge 2 ] || { echo "image-check: the reference merge has only $n shard/index files" >&2; exit 1; }
if [ "$(cd "$work/ref" && ls)" != "$(cd "$merged" && ls)" ]; then
	echo "image-check: the image's merge wrote other files than the host's:" >&2
	diff <(cd "$work/ref" && ls) <(cd "$merged" && ls) >&2 || true
	exit 1
fi
echo "image-check: the merge in the image gave the host's $n shard and index files, byte for byte"
