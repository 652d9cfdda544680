#!/usr/bin/env bash
# Builds the edge worker (edge/build/worker/shim.mjs and its Wasm module) with worker-build.
# worker-build would download wasm-bindgen, esbuild and wasm-opt from GitHub; it uses the
# pinned ones that scripts/bootstrap.sh installs instead. wrangler.toml's [build] runs this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" || { echo "wasm-bindgen is missing: run scripts/bootstrap.sh" >&2; exit 1; }
export WASM_BINDGEN_BIN
export ESBUILD_BIN="$root/node_modules/.bin/esbuild"
export WASM_OPT_BIN="$root/node_modules/.bin/wasm-opt"
# Size over speed for the Wasm module (docs/benchmarks.md, P7: 176 -> 157 KiB gzipped).
# Set here, not in Cargo.toml, so the merger's release build keeps opt-level 3.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
cd "$root/edge"
worker-build --release "$@"
# worker-build keeps the Wasm `name` section (function names for stack traces: a fifth of the
# module) and the producers section; a deploy does not need them (TALLY_EDGE_NAMES=1 keeps
# them, for a build whose panics should name their functions). The same features as
# worker-build's own wasm-opt pass, so nothing newer than workerd supports is emitted; one more
# -Oz pass over the stripped module finds a little more (329,005 -> 326,883 B gzip on
# 2026-12-07).
[[ "${TALLY_EDGE_NAMES:-0}" == 1 ]] && exit 0
# The module worker-build wrote: build/ by default, or --out-dir's (relative to edge/).
out=build
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out-dir) out="${args[i + 1]:-build}" ;;
    --out-dir=*) out="${args[i]#--out-dir=}" ;;
  esac
done
[[ "$out" == /* ]] || out="$root/edge/$out"
module="$out/index_bg.wasm"
"$WASM_OPT_BIN" -Oz --strip-debug --strip-producers \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling \
  "$module" -o "$module.stripped"
mv "$module.stripped" "$module"
