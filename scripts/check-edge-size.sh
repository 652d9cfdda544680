#!/usr/bin/env bash
# Fails when the edge worker's Wasm module (edge/build/index_bg.wasm, as scripts/build-edge.sh
# builds it) grows past its budget, gzip -9 bytes: it is paid at every cold start. The budget
# is the size it has, with a little room, and only goes down as the module shrinks; P7's goal
# (docs/benchmarks.md, issue 29) is 200 KiB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/edge/build/index_bg.wasm"
budget=327000
goal=$((200 * 1024))
[[ -f "$module" ]] || { echo "no $module: run scripts/build-edge.sh first" >&2; exit 1; }
raw=$(stat -c %s "$module")
gzipped=$(gzip -9 -c "$module" | wc -c)
echo "edge Wasm module: $raw bytes, $gzipped gzip -9 (budget $budget, P7's goal $goal)"
if (( gzipped > budget )); then
  echo "the edge Wasm module grew past its budget: $gzipped > $budget bytes gzip -9" >&2
  exit 1
fi
