#!/usr/bin/env bash
# Validates every YAML file under examples/ (GitHub Actions workflows with actionlint,
# Kubernetes objects by strict decoding into k8s.io/api's types plus the fields the API
# server requires; scripts/checkexamples), then checks the checker: each file under
# scripts/checkexamples/testdata/broken/ is an example broken one way, and must be
# refused with the words its first line ("# want: ...") gives.
#
# The checker is its own Go module (pinned in scripts/checkexamples/go.mod and go.sum),
# so hfmerge does not depend on it; after the first download of its modules it needs no
# network.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd scripts/checkexamples && GOFLAGS= go vet . && GOFLAGS= go build -o "$tmp/checkexamples" .)
"$tmp/checkexamples" examples
n=0
for f in scripts/checkexamples/testdata/broken/*; do
	want=$(sed -n '1s/^# want: //p' "$f")
	if [ -z "$want" ]; then
		echo "$f: its first line must be '# want: <words of the expected error>'"; exit 1
	fi
	if out=$("$tmp/checkexamples" "$f"); then
		echo "check-examples passed a broken example, $f:"; echo "$out"; exit 1
	fi
	if ! grep -qF -- "$want" <<<"$out"; then
		echo "check-examples refused $f without saying \"$want\":"; echo "$out"; exit 1
	fi
	n=$((n + 1))
done
echo "check-examples refused each of the $n broken examples, for the reason expected"
