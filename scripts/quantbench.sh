#!/usr/bin/env bash
# Merging into a quantized base, per --quantized mode, against the copy floor.
#
# FORMAT=fp8 (default): a Llama-shaped model of about 1 GB whose projections are F8_E4M3
# with 128x128 block scales (hidden 3072, MLP 8192, 7 layers, vocabulary 32000, BF16
# embeddings and head; shards of at most 450 MB) and a rank-16 LoRA on all seven
# projections. Needs ~6 GB of disk in WORKDIR.
# FORMAT=mxfp4: a gpt-oss-shaped model with gpt-oss-120b's widths (hidden 2880,
# intermediate 2880, so gate_up_proj is (E, 2880, 5760) and down_proj (E, 2880, 2880) an
# expert layer), EXPERTS experts a layer (default 8), LAYERS layers (default 2), MXFP4
# experts with BF16 attention, router, biases and embeddings, and a rank-16 expert LoRA on
# every layer's gate_up_proj and down_proj. Needs ~3 GB of disk in WORKDIR.
#
# Every quantized tensor is touched: the worst case for keep and mixed. Reports the copy
# floor (dd bs=8M), then for each mode the wall time of `hfmerge merge`, its ratio to the
# copy, its CPU time (user + system), the output size, peak RSS (GNU time) and, for keep,
# the survival report.
#
#   scripts/quantbench.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
#   SCALE=F8_E8M0 scripts/quantbench.sh (FP8 scale dtype: F32 (default), BF16, F16, F8_E8M0)
#   FORMAT=mxfp4 EXPERTS=16 scripts/quantbench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
format=${FORMAT:-fp8}
case $format in
fp8)
	scale=${SCALE:-F32}
	gen=(-fp8 "$scale" -hidden 3072 -intermediate 8192 -layers 7)
	what="scales $scale"
	;;
mxfp4)
	experts=${EXPERTS:-8}
	layers=${LAYERS:-2}
	gen=(-mxfp4-experts "$experts" -hidden 2880 -intermediate 2880 -layers "$layers")
	what="$experts experts x $layers layers, hidden 2880, intermediate 2880"
	;;
*)
	echo "FORMAT=$format: want fp8 or mxfp4" >&2
	exit 2
	;;
esac
[ -d "$work/base" ] || go run ./scripts/genmodel -out "$work" -rank 16 "${gen[@]}" -vocab 32000 >/dev/null

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
printf 'model: %s, %.2f GB in %d shards, %s\n' "$format" "$(echo "$size/1000000000" | bc -l)" \
	"$(ls "$work"/base/*.safetensors | wc -l)" "$what"
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
		grep 'msg=requantized\|msg="requantized' "$work/time.txt" | sed 's/^time=[^ ]* /  /' | head -5 || true
	fi
done
rm -rf "$work/out"
