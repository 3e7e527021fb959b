#!/usr/bin/env bash
# A push through Xet of a model whose largest shard is over 1 GB (one layer of a 70B's
# shape: hidden 8192, MLP 28672), LoRA on q_proj, v_proj and down_proj (so the 1.5 GB shard changes), base remote and in the
# fake Hub's Xet CAS: the peak RSS of hfmerge and the peak disk of its HF_HOME (where
# merged shards would be staged; the Xet path stages none). Needs ~10 GB of RAM for the
# in-process fake Hub and ~4 GB of disk.
#
#   scripts/xetrss.sh [WORKDIR]    (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
go build -o "$work/hfmerge" ./cmd/hfmerge
go build -o "$work/pushbench" ./scripts/pushbench
"$work/pushbench" -bin "$work/hfmerge" -work "$work/xet" -hidden 8192 -intermediate 28672 -layers 1 -vocab 4096 \
	-shard-mb 1500 -down 400 -up 400 -targets q_proj,v_proj,down_proj -runs xet
