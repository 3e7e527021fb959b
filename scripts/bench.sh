#!/usr/bin/env bash
# Merge speed against the copy floor, in one run: generates a Llama-shaped bf16 model of
# about 1 GB (hidden 2048, MLP 5632, 8 layers, vocabulary 32000; shards of at most 450 MB,
# as Transformers' max_shard_size cuts them) with LoRA adapters of rank 16 and 64 on all seven
# projections, then reports the time to copy the shards with dd bs=8M, the time of
# `hfmerge merge` for each rank (best of 3 each), their ratios, and peak RSS (GNU time).
# hfmerge makes its output durable (fsync) before renaming it into place, which plain
# dd does not; the copy with conv=fsync is printed too, for that floor. Needs ~4 GB of
# disk in WORKDIR.
#
#   scripts/bench.sh [WORKDIR]     (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
gen="-hidden 2048 -intermediate 5632 -layers 8 -vocab 32000"
[ -d "$work/base" ] || go run ./scripts/genmodel -out "$work" -rank 16 $gen >/dev/null
for r in 16 64; do
	[ -d "$work/r$r/adapter" ] || go run ./scripts/genmodel -out "$work/r$r" -rank "$r" -adapter-only $gen >/dev/null
done

# best runs a command three times and prints the best wall time in seconds.
best() {
	local b=""
	for _ in 1 2 3; do
		rm -rf "$work/out"
		sync
		local s e
		s=$(date +%s.%N)
		"$@"
		e=$(date +%s.%N)
		local t
		t=$(echo "$e - $s" | bc -l)
		if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
	done
	rm -rf "$work/out"
	printf '%.2f' "$b"
}

copy() { # [dd conversion]
	mkdir -p "$work/out"
	for f in "$work"/base/*.safetensors; do
		dd if="$f" of="$work/out/$(basename "$f")" bs=8M status=none ${1:+"$1"}
	done
}

merge() { # rank
	"$work/hfmerge" merge --base "$work/base" --adapter "$work/r$1/adapter" --out "$work/out" --progress none 2>/dev/null
}

rss() { # rank
	rm -rf "$work/out"
	/usr/bin/time -f '%M' "$work/hfmerge" merge --base "$work/base" --adapter "$work/r$1/adapter" \
		--out "$work/out" --progress none 2>&1 >/dev/null | tail -1
	rm -rf "$work/out"
}

size=$(du -cb "$work"/base/*.safetensors | tail -1 | cut -f1)
echo "$("$work/hfmerge" version); $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernels: ${HFMERGE_KERNEL:-auto}"
printf 'model: %.2f GB in %d shards\n' "$(echo "$size/1000000000" | bc -l)" "$(ls "$work"/base/*.safetensors | wc -l)"
c=$(best copy)
printf '%-24s %6s s\n' "dd bs=8M copy" "$c"
cs=$(best copy conv=fsync)
printf '%-24s %6s s   %.2fx copy\n' "dd bs=8M conv=fsync copy" "$cs" "$(echo "$cs / $c" | bc -l)"
for r in 16 64; do
	m=$(best merge "$r")
	printf '%-24s %6s s   %.2fx copy   %.2fx durable copy   peak RSS %d MB\n' "hfmerge merge, rank $r" "$m" \
		"$(echo "$m / $c" | bc -l)" "$(echo "$m / $cs" | bc -l)" "$(( $(rss "$r") / 1024 ))"
done
