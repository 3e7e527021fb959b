#!/usr/bin/env bash
# What DoRA and several deltas on one tensor cost against plain LoRA, in one run. On the
# Llama-shaped bf16 model of scripts/bench.sh (about 1 GB), times `hfmerge merge` (best of
# 5) with a LoRA of rank 16 on q_proj, v_proj and the embedding and with a DoRA adapter on
# the same targets, and reports their ratio (the target: DoRA within 1.5x); then two
# adapters of rank 16 on every projection stacked in one pass (--adapter A --adapter B)
# against one adapter of rank 32 (the target: within 1.3x). The Go benchmark
# (go test ./merge -bench Kernels, the fastest of 200 blocks of a projection on one core)
# gives the same comparisons per block. Needs ~4 GB of disk in WORKDIR.
#
#   scripts/bench-kinds.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
gen="-hidden 2048 -intermediate 5632 -layers 8 -vocab 32000"
[ -d "$work/base" ] || go run ./scripts/genmodel -out "$work" -rank 16 $gen >/dev/null
targets=q_proj,v_proj,embed_tokens
[ -d "$work/lora-qve/adapter" ] || go run ./scripts/genmodel -out "$work/lora-qve" -rank 16 -adapter-only -targets "$targets" $gen >/dev/null
[ -d "$work/dora-qve/adapter" ] || go run ./scripts/genmodel -out "$work/dora-qve" -rank 16 -adapter-only -targets "$targets" -dora $gen >/dev/null
[ -d "$work/r32/adapter" ] || go run ./scripts/genmodel -out "$work/r32" -rank 32 -adapter-only $gen >/dev/null
[ -d "$work/r16a/adapter" ] || go run ./scripts/genmodel -out "$work/r16a" -rank 16 -seed 2 -adapter-only $gen >/dev/null
[ -d "$work/r16b/adapter" ] || go run ./scripts/genmodel -out "$work/r16b" -rank 16 -seed 3 -adapter-only $gen >/dev/null

# best runs a merge five times and prints the best wall time in seconds.
best() { # adapter...
	local b="" args=()
	for a in "$@"; do args+=(--adapter "$work/$a/adapter"); done
	for _ in 1 2 3 4 5; do
		rm -rf "$work/out"
		sync
		local s e t
		s=$(date +%s.%N)
		"$work/hfmerge" merge --base "$work/base" "${args[@]}" --out "$work/out" --progress none 2>/dev/null
		e=$(date +%s.%N)
		t=$(echo "$e - $s" | bc -l)
		if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
	done
	rm -rf "$work/out"
	printf '%.2f' "$b"
}

flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512dq|avx512vl|avx512_bf16)$' | xargs)
echo "$("$work/hfmerge" version); $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($flags); kernel: ${HFMERGE_KERNEL:-auto}"
l=$(best lora-qve)
printf '%-40s %6s s\n' "LoRA r16 on q_proj, v_proj, embedding" "$l"
d=$(best dora-qve)
printf '%-40s %6s s   %.2fx LoRA\n' "DoRA r16 on the same" "$d" "$(echo "$d / $l" | bc -l)"
r=$(best r32)
printf '%-40s %6s s\n' "LoRA r32 on all projections" "$r"
st=$(best r16a r16b)
printf '%-40s %6s s   %.2fx r32\n' "two LoRA r16 stacked, all projections" "$st" "$(echo "$st / $r" | bc -l)"

# The kernel Kernels() puts first, as the merge above used (or HFMERGE_KERNEL).
k=${HFMERGE_KERNEL:-$(grep -q avx512f /proc/cpuinfo && echo avx512 || (grep -q avx2 /proc/cpuinfo && echo avx2 || echo go))}
out=$(go test ./merge -run X -bench "Kernels/$k/BF16/" -benchtime 200x)
min() { echo "$out" | awk -v c="$1" '$1 ~ c"-[0-9]+$" { for (i = 1; i < NF; i++) if ($(i+1) == "min-ns/op") print $i }'; }
r16=$(min "BF16/rank=16") r32=$(min "BF16/rank=32") r1616=$(min "BF16/rank=16\\+16") dr=$(min "BF16/dora/rank=16")
printf '%-40s %6.0f µs\n' "block, $k, one delta r16" "$(echo "$r16 / 1000" | bc -l)"
printf '%-40s %6.0f µs   %.2fx r16\n' "block, $k, DoRA r16" "$(echo "$dr / 1000" | bc -l)" "$(echo "$dr / $r16" | bc -l)"
printf '%-40s %6.0f µs\n' "block, $k, one delta r32" "$(echo "$r32 / 1000" | bc -l)"
printf '%-40s %6.0f µs   %.2fx r32\n' "block, $k, two deltas r16 + r16" "$(echo "$r1616 / 1000" | bc -l)" "$(echo "$r1616 / $r32" | bc -l)"
