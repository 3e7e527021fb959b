#!/usr/bin/env bash
# Merging an expert LoRA into an MXFP4 (gpt-oss) base, per --quantized mode: generates a
# gpt-oss-shaped model with gpt-oss-120b's widths (hidden 2880, intermediate 2880, so
# gate_up_proj is (E, 2880, 5760) and down_proj (E, 2880, 2880) an expert layer), EXPERTS
# experts a layer (default 8), LAYERS layers (default 2), vocabulary 32000, MXFP4 experts
# with BF16 attention, router, biases and embeddings, and a rank-16 expert LoRA on every
# layer's gate_up_proj and down_proj (every MXFP4 tensor touched: the worst case for keep
# and mixed). Reports the copy floor (dd bs=8M), then for each mode the wall time of
# `hfmerge merge`, its CPU time (user + system), the output size, peak RSS (GNU time)
# and, for keep, the survival report. Needs ~3 GB of disk in WORKDIR.
#
#   scripts/mxfp4bench.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
#   EXPERTS=4 LAYERS=2 scripts/mxfp4bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
experts=${EXPERTS:-8}
layers=${LAYERS:-2}
[ -d "$work/base" ] || go run ./scripts/genmodel -out "$work" -rank 16 -mxfp4-experts "$experts" \
	-hidden 2880 -intermediate 2880 -layers "$layers" -vocab 32000 >/dev/null

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
echo "$("$work/hfmerge" version); $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'model: %.2f GB in %d shards, %d experts x %d layers, hidden 2880, intermediate 2880\n' \
	"$(echo "$size/1000000000" | bc -l)" "$(ls "$work"/base/*.safetensors | wc -l)" "$experts" "$layers"
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
	cpu=$(awk -F': ' '/(User|System) time/ {s += $2} END {print s}' "$work/time.txt")
	out=$(du -cb "$work"/out/*.safetensors | tail -1 | cut -f1)
	printf '%-22s %7.2f s   %5.2fx copy   CPU %6.2f s   output %.2f GB   peak RSS %d MB\n' "merge --quantized $mode" "$secs" \
		"$(echo "$secs / $c" | bc -l)" "$cpu" "$(echo "$out/1000000000" | bc -l)" "$((rss / 1024))"
	if [ "$mode" = keep ]; then
		grep 'msg=requantized\|msg="requantized' "$work/time.txt" | sed 's/^time=[^ ]* /  /' || true
	fi
done
rm -rf "$work/out"
