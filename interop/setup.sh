#!/usr/bin/env bash
# Installs the pinned @huggingface/hub into interop/node_modules for the interop tests:
#   bash interop/setup.sh && go test -tags interop ./interop/...
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "interop/setup.sh: node and npm are required (Node.js 20 or newer)" >&2
	exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
	echo "interop/setup.sh: Node.js $(node --version) is too old; need 20 or newer" >&2
	exit 1
fi
# npm ci installs exactly what package-lock.json pins.
npm ci --no-audit --no-fund --loglevel=error
node --input-type=module -e 'await import("@huggingface/hub"); const fs = await import("node:fs"); console.log("@huggingface/hub", JSON.parse(fs.readFileSync("node_modules/@huggingface/hub/package.json")).version, "ready")'
