#!/usr/bin/env bash
# Runs every test of tally, after installing whatever is missing (scripts/bootstrap.sh).
# This is the README's test command and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

step() {
  local name=$1; shift
  printf '\n=== %s\n' "$name" >&2
  local start=$SECONDS
  "$@"
  printf '=== %s: ok (%ss)\n' "$name" $((SECONDS - start)) >&2
}

step "format" cargo fmt --all --check
step "clippy (native)" cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
step "clippy (wasm32: tally-crdt)" cargo clippy -p tally-crdt --target wasm32-unknown-unknown --lib --tests --all-features --locked -- -D warnings
step "clippy (wasm32: tally-edge)" cargo clippy -p tally-edge --target wasm32-unknown-unknown --lib --locked -- -D warnings
step "edge worker build (worker-build, wasm32)" bash scripts/build-edge.sh
# Unit tests, proptest laws, sync bodies, doctests, the merger in-process and as a binary
# (kill -9 rounds), and end to end: the merger binary with the worker under wrangler dev.
step "tests (native and end to end)" cargo test --workspace --all-features --locked
step "benchmarks run once (test mode)" cargo test -p tally-crdt --bench merge --bench hll --locked
step "no_std build (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --locked
step "no_std build with json (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --features json --locked
step "fuzz (bounded, 20 s per target; skipped without a nightly toolchain)" env FUZZ_SECONDS=20 bash scripts/fuzz.sh
step "wasm-bindgen-test (wasm32 in Node)" env CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p tally-crdt --target wasm32-unknown-unknown --features wasm --test wasm --locked
# The npm package as a user gets it: built, packed, installed from its tarball, tested in Node.
step "JS package (tally-crdt in Node)" bash scripts/test-js.sh

printf '\nall tests passed\n' >&2
