#!/usr/bin/env bash
# Runs every test of tally, after installing whatever is missing (scripts/bootstrap.sh).
# This is the README's test command and exactly what CI runs (.ci/run). With --build-only it
# stops after the build phase (docs/testing.md: running one test alone).
#
# Checks and builds run one after the other; then the tests run in five lanes at once, from
# the executables built before (no lane runs cargo). Each lane's output is printed when it ends.
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
# its lane is done; fails if any lane failed, or if a lane compiled anything (everything is
# built before the lanes start).
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
    if grep -qE '^ *Compiling ' "$dir/$lane.log"; then
      printf '\n--- lane %s compiled code; everything must be built before the lanes start:\n' "$lane" >&2
      grep -E '^ *Compiling ' "$dir/$lane.log" >&2
      failed=1
    fi
  done
  rm -rf "$dir"
  return "$failed"
}

# Where the build phase leaves its lists of what it built, for the lanes.
built=${CARGO_TARGET_DIR:-$PWD/target}/tally-test
mkdir -p "$built"

# Builds with `cargo … --no-run --message-format=json-render-diagnostics` (diagnostics shown as
# usual) and lists the executables it made in $built/NAME.tsv (scripts/list-test-binaries.py).
build_list() {
  local name=$1; shift
  "$@" --message-format=json-render-diagnostics | python3 scripts/list-test-binaries.py "$built/$name.tsv"
}

# Runs each executable of list NAME whose columns match the awk condition COND (role, package,
# kind, name: $1-$4), in its package's folder as cargo test would, with ARGS after `--`; under
# the program RUN_WITH names, when set (a runner, as cargo's target runner).
run_listed() {
  local list=$built/$1.tsv cond=$2; shift 2
  [ "${1:-}" = -- ] && shift
  local role package kind name exe dir ran=0 failed=()
  while IFS=$'\t' read -r role package kind name exe dir; do
    printf '\n--- %s %s %s (%s)\n' "$package" "$kind" "$name" "${exe#"$PWD"/}" >&2
    # shellcheck disable=SC2086 # RUN_WITH is a command and its words
    (cd "$dir" && ${RUN_WITH:-} "$exe" "$@") || failed+=("$package $kind $name")
    ran=$((ran + 1))
  done < <(awk -F'\t' "$cond" "$list")
  [ "$ran" -gt 0 ] || { printf 'no executable of %s matches %s\n' "$list" "$cond" >&2; return 1; }
  [ ${#failed[@]} -eq 0 ] || { printf 'FAILED: %s\n' "${failed[@]}" >&2; return 1; }
}

# The one executable of list NAME matching COND.
listed() {
  local found
  found=$(awk -F'\t' "$2 { print \$5 }" "$built/$1.tsv")
  [ -n "$found" ] && [ "$(wc -l <<<"$found")" -eq 1 ] ||
    { printf 'expected one executable of %s matching %s, found: %s\n' "$1" "$2" "${found:-none}" >&2; return 1; }
  printf '%s\n' "$found"
}

# --- The build phase: everything any lane runs is built here, one build after the other (each
# keeps both cores busy; three at once, tried, took 573 s against 382 s in turn). No lane runs
# cargo: a build inside a lane competes with the tests for the two cores and can resolve other
# features than this phase (the lanes' logs are checked for a `Compiling` line at the end).
step "format" cargo fmt --all --check
# Clippy lints every workspace crate while it is built, instead of in a check build of its own
# (`cargo clippy` runs clippy-driver the same way, as the workspace's rustc wrapper, only in
# check mode): one compile of the workspace instead of two. Every cargo command below builds
# with it, so nothing is built twice, and a clippy warning anywhere fails the run: the native
# tests and benches (`--all-targets`), the worker (worker-build's wasm32 release build of
# tally-edge and tally-crdt), tally-crdt's npm package and its wasm32 tests with all features.
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

step "edge worker build (worker-build, wasm32; clippy)" bash scripts/build-edge.sh
step "edge Wasm module within its size budget" bash scripts/check-edge-size.sh
# Each environment of wrangler.toml built as `wrangler deploy` would upload it (--dry-run, no
# network), and what it declares checked: bindings, migrations, settings, bundle size.
step "deploy bundles, checked offline (wrangler deploy --dry-run, per environment)" \
  python3 scripts/check-deploy.py
# The test harnesses of every crate, the benches (run once, in test mode), and the merger binary
# the end-to-end tests start, all with the workspace's features.
step "build the tests, the benches and the merger binary (clippy)" \
  build_list native cargo test --workspace --all-features --all-targets --locked --no-run
step "no_std build (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --locked
step "no_std build with json (thumbv7em-none-eabihf)" cargo build -p tally-crdt --target thumbv7em-none-eabihf --no-default-features --features json --locked
step "build the wasm32 tests (clippy)" \
  build_list wasm cargo test -p tally-crdt --target wasm32-unknown-unknown --all-features --test wasm --locked --no-run
# rustdoc compiles the doctests as it runs them: they cannot be built ahead, so they run here.
step "doctests (rustdoc builds and runs them)" cargo test --workspace --all-features --doc --locked
step "npm package build (tally-crdt for Node and bundlers)" bash scripts/build-js.sh
step "npm package build (tally-client, the web and Node client)" bash scripts/build-client.sh
# cargo-fuzz builds with nightly (in fuzz/target), which the stable clippy-driver cannot wrap.
step "fuzz targets build (nightly, cargo-fuzz)" \
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash scripts/fuzz.sh build

if [ "${1:-}" = --build-only ]; then
  printf '\nbuilt everything the tests run in %ss (scripts/e2e-loop.sh runs end-to-end tests from it)\n' $((SECONDS - start_all)) >&2
  exit 0
fi

# --- The lanes: the tests run in five lanes at once, from the executables built above. The
# end-to-end tests mostly wait on sync intervals and servers (within a lane they run one at a
# time, `tally_e2e::serial`), so three lanes of them, one of native tests and one of fuzzing
# share 2 cores well.
#
# End to end: the merger binary and the worker under wrangler's dev server, on loopback, all in
# one test binary (tests/tests/e2e/, a module per area). Lanes one and two take the areas named
# here, lane three every other (a new module lands there by itself). Each runs the harness's own
# tests too, with the same filters, so each runs exactly once (its `postgres::tests` go with
# lane three). The harness builds nothing: it serves the worker built above and starts the
# merger binary the workspace build made.
export TALLY_E2E_WORKER_BUILD=$PWD/edge/build
TALLY_E2E_MERGER_BIN=$(listed native '$1 == "bin" && $4 == "tally-merger"')
export TALLY_E2E_MERGER_BIN
e2e_one=(reliability retire reset)
e2e_two=(edge edge_paths presence hostile)
filters_one=() filters_two=() skips=()
for area in "${e2e_one[@]}"; do filters_one+=("$area::"); skips+=(--skip "$area::"); done
for area in "${e2e_two[@]}"; do filters_two+=("$area::"); skips+=(--skip "$area::"); done

# The harness's library tests and the e2e binary, with the given libtest arguments.
e2e() { run_listed native '$1 == "test" && $2 == "tally-e2e"' -- "$@"; }
e2e_lane_one() { step "end to end: ${e2e_one[*]}" e2e "${filters_one[@]}"; }
e2e_lane_two() { step "end to end: ${e2e_two[*]}" e2e "${filters_two[@]}"; }
e2e_lane_three() { step "end to end: every other area" e2e "${skips[@]}"; }
wasm_tests() { RUN_WITH=wasm-bindgen-test-runner run_listed wasm '$1 == "test"'; }
native_lane() {
  # Unit tests, proptest laws, sync bodies, the merger in-process and as a binary (kill -9
  # rounds), the Postgres store against a throwaway cluster; each bench once in test mode.
  step "native tests and benches (every crate but tally-e2e)" \
    run_listed native '$1 == "test" && $2 != "tally-e2e"'
  step "wasm-bindgen-test (wasm32 in Node)" wasm_tests
  # The npm package as a user gets it: packed, installed from its tarball, tested in Node.
  step "JS package (tally-crdt in Node)" bash scripts/test-js.sh --built
  # The alert rules (unit-tested), the dashboard's queries, and the metrics they name against
  # a live merger's /metrics.
  step "ops: alert rules and dashboards (promtool, a live merger)" python3 scripts/check-ops.py
}
fuzz_lane() {
  step "fuzz (bounded, 20 s per target)" env FUZZ_SECONDS=20 bash scripts/fuzz.sh run
}
# Every time a test bounded, against its bound (tally_e2e::record_timing; docs/testing.md).
export TALLY_TIMINGS=$built/timings.tsv
: > "$TALLY_TIMINGS"
step "tests, in five lanes at once" lanes e2e_lane_one e2e_lane_two e2e_lane_three native_lane fuzz_lane
printf '\n=== times the tests bounded, this run (scripts/timings.py %s)\n' "${TALLY_TIMINGS#"$PWD"/}" >&2
python3 scripts/timings.py "$TALLY_TIMINGS" >&2

printf '\nall tests passed in %ss\n' $((SECONDS - start_all)) >&2
