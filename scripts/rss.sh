#!/usr/bin/env bash
# Peak memory of `hfmerge merge` on a ~1 GB Llama-shaped model and on one whose tensors
# are 4x larger (~4 GB): the promise is that memory stays near a few row blocks, so the
# two peaks should be about the same. Needs GNU time (/usr/bin/time) and ~12 GB of disk.
#
#   scripts/rss.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
rank=${RANK:-16}

run() { # name, genmodel flags...
	local name=$1; shift
	[ -d "$work/$name/base" ] || go run ./scripts/genmodel -out "$work/$name" -rank "$rank" "$@"
	rm -rf "$work/$name/out"
	/usr/bin/time -v "$work/hfmerge" merge --base "$work/$name/base" --adapter "$work/$name/adapter" \
		--out "$work/$name/out" --progress none 2>"$work/$name/time.txt" >/dev/null
	local rss secs size
	rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name/time.txt")
	secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/$name/time.txt")
	size=$(du -sb "$work/$name/out" | cut -f1)
	printf '%-6s model %6.2f GB  peak RSS %6.1f MB  wall %s\n' "$name" "$(echo "$size/1000000000" | bc -l)" "$(echo "$rss/1024" | bc -l)" "$secs"
	rm -rf "$work/$name/out"
}

echo "$("$work/hfmerge" version); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); rank $rank"
run 1x -hidden 2048 -intermediate 5632 -layers 8 -vocab 32000
run 4x -hidden 4096 -intermediate 11264 -layers 8 -vocab 64000
