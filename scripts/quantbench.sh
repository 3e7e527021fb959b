#!/usr/bin/env bash
# Merging into a block-FP8 base, per --quantized mode, against the copy floor: generates a
# Llama-shaped model of about 1 GB whose projections are F8_E4M3 with 128x128 block scales
# (hidden 3072, MLP 8192, 7 layers, vocabulary 32000, BF16 embeddings and head; shards of at
# most 450 MB) and a rank-16 LoRA on all seven projections (so every FP8 weight is touched:
# the worst case for keep and mixed), then reports the time to copy the shards with dd
# bs=8M, and for each mode the wall time of `hfmerge merge`, its ratio to the copy, the
# output size and peak RSS (GNU time). Needs ~6 GB of disk in WORKDIR.
#
#   scripts/quantbench.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
#   SCALE=F8_E8M0 scripts/quantbench.sh (scale dtype: F32 (default), BF16, F16, F8_E8M0)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
scale=${SCALE:-F32}
[ -d "$work/base" ] || go run ./scripts/genmodel -out "$work" -rank 16 -fp8 "$scale" \
	-hidden 3072 -intermediate 8192 -layers 7 -vocab 32000 >/dev/null

timed() { # seconds of wall time of a command
	local s e
	sync
	s=$(date +%s.%N)
	"$@"
	e=$(date +%s.%N)
	echo "$e - $s" | bc -l
}

copy() {
	mkdir -p "$work/out"
	for f in "$work"/base/*.safetensors; do
		dd if="$f" of="$work/out/$(basename "$f")" bs=8M status=none
	done
}

size=$(du -cb "$work"/base/*.safetensors | tail -1 | cut -f1)
echo "$("$work/hfmerge" version); $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); scales $scale"
printf 'model: %.2f GB in %d shards\n' "$(echo "$size/1000000000" | bc -l)" "$(ls "$work"/base/*.safetensors | wc -l)"
rm -rf "$work/out"
c=$(timed copy)
rm -rf "$work/out"
printf '%-22s %7.2f s\n' "dd bs=8M copy" "$c"
for mode in bf16 keep mixed; do
	rm -rf "$work/out"
	sync
	/usr/bin/time -v "$work/hfmerge" merge --base "$work/base" --adapter "$work/adapter" --out "$work/out" \
		--quantized "$mode" --progress none 2>"$work/time.txt" >/dev/null
	secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt" | awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
	rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
	out=$(du -cb "$work"/out/*.safetensors | tail -1 | cut -f1)
	printf '%-22s %7.2f s   %5.2fx copy   output %.2f GB   peak RSS %d MB\n' "merge --quantized $mode" "$secs" \
		"$(echo "$secs / $c" | bc -l)" "$(echo "$out/1000000000" | bc -l)" "$((rss / 1024))"
done
rm -rf "$work/out"
