#!/usr/bin/env bash
# Push speed against the network floor on a modelled link (see scripts/pushbench):
# a ~300 MB Llama-shaped bf16 model in 9 shards, LoRA r16 on all seven projections, one
# shared 50 MB/s download and one 25 MB/s upload; then the wide-row model (hidden 8192,
# MLP 28672: a 70B model's rows) for peak RSS, on a faster link.
#
#   scripts/pushbench.sh [WORKDIR]    (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
go build -o "$work/pushbench" ./scripts/pushbench
echo "== ~300 MB model, 9 shards (the xet run: a Hub with Xet storage, the base uploaded through Xet)"
"$work/pushbench" -bin "$work/hfmerge" -work "$work/small"
echo
echo "== wide rows (hidden 8192, MLP 28672), 1 layer, 200 MB/s down, 100 MB/s up"
"$work/pushbench" -bin "$work/hfmerge" -work "$work/wide" -hidden 8192 -intermediate 28672 -layers 1 -vocab 4096 \
	-shard-mb 500 -down 200 -up 100 -runs remote,cached
