#!/usr/bin/env bash
# Runs every test of tally, after installing whatever is missing (scripts/bootstrap.sh).
# This is the README's test command and exactly what CI runs (.ci/run).
#
# Checks and builds run one after the other; then the tests run in three lanes at once (the
# end-to-end tests mostly wait on sync intervals and servers, so two lanes of them and one of
# native tests share 2 cores well). Each lane's output is printed when it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
start_all=$SECONDS

step() {
  local name=$1; shift
  printf '\n=== %s\n' "$name" >&2
  local start=$SECONDS
  "$@"
  printf '=== %s: ok (%ss)\n' "$name" $((SECONDS - start)) >&2
}

# Runs the lanes (functions) at once, each into its own log; prints every log, in order, once
# its lane is done; fails if any lane failed.
lanes() {
  local dir pids=() names=("$@") lane i failed=0
  dir=$(mktemp -d)
  for lane in "$@"; do
    ( "$lane" ) >"$dir/$lane.log" 2>&1 &
    pids+=("$!")
  done
  for i in "${!pids[@]}"; do
    lane=${names[$i]}
    if wait "${pids[$i]}"; then
      printf '\n--- lane %s: ok\n' "$lane" >&2
    else
      printf '\n--- lane %s: FAILED\n' "$lane" >&2
      failed=1
    fi
    cat "$dir/$lane.log" >&2
  done
  rm -rf "$dir"
  return "$failed"
}

step "format" cargo fmt --all --check
# Clippy lints every workspace crate while it is built, instead of in a check build of its own
# (`cargo clippy` runs clippy-driver the same way, as the workspace's rustc wrapper, only in
# check mode): one compile of the workspace instead of two. Every cargo command below builds
# with it, so nothing is built twice, and a clippy warning anywhere fails the run: the native
# tests and benches (`--all-targets`), the worker (worker-build's wasm32 release build of
# tally-edge and tally-crdt) and tally-crdt's wasm32 tests with all features.
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
step "edge worker build (worker-build, wasm32; clippy)" bash scripts/build-edge.sh
# Everything the lanes run is built here, so that they do not wait on each other's builds.
step "build the tests and benches (clippy)" cargo test --workspace --all-features --all-targets --locked --no-run
step "no_std build (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --locked
step "no_std build with json (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --features json --locked
wasm_tests=(env CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
  cargo test -p tally-crdt --target wasm32-unknown-unknown --all-features --test wasm --locked)
step "build the wasm32 tests (clippy)" "${wasm_tests[@]}" --no-run

# End to end: the merger binary and the worker under wrangler dev, on loopback. Lane one takes
# these; lane two every other test of tests/tests/ (a new file lands there by itself).
e2e_one=(reliability retire postgres reset dashboard)
e2e_two=()
for target in tests/tests/*; do
  name=$(basename "$target" .rs)
  [[ " ${e2e_one[*]} " == *" $name "* ]] || e2e_two+=("$name")
done
as_tests() { printf -- '--test\n%s\n' "$@"; }

e2e_lane_one() {
  mapfile -t tests < <(as_tests "${e2e_one[@]}")
  step "end to end: ${e2e_one[*]}" cargo test -p tally-e2e --all-features --locked "${tests[@]}"
}
e2e_lane_two() {
  mapfile -t tests < <(as_tests "${e2e_two[@]}")
  step "end to end: ${e2e_two[*]}, and the harness's own tests" \
    cargo test -p tally-e2e --all-features --locked --lib "${tests[@]}"
}
native_lane() {
  # Unit tests, proptest laws, sync bodies, doctests, the merger in-process and as a binary
  # (kill -9 rounds), the Postgres store against a throwaway cluster.
  step "native tests (every crate but tally-e2e)" cargo test --workspace --exclude tally-e2e --all-features --locked
  # The same packages and features as the build step, so the benches it built are reused
  # (a narrower `-p` resolves other features and rebuilds half the dependencies).
  # (`--bench '*'`: the bench targets only; `--benches` runs the library tests again too.)
  step "benchmarks run once (test mode)" cargo test --workspace --all-features --bench '*' --locked
  # cargo-fuzz builds with nightly, which the stable clippy-driver cannot wrap.
  step "fuzz (bounded, 20 s per target; skipped without a nightly toolchain)" \
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS FUZZ_SECONDS=20 bash scripts/fuzz.sh
  step "wasm-bindgen-test (wasm32 in Node)" "${wasm_tests[@]}"
  # The npm package as a user gets it: built, packed, installed from its tarball, tested in Node.
  step "JS package (tally-crdt in Node)" bash scripts/test-js.sh
}
step "tests, in three lanes at once" lanes e2e_lane_one e2e_lane_two native_lane

printf '\nall tests passed in %ss\n' $((SECONDS - start_all)) >&2
