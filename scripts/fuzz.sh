#!/usr/bin/env bash
# Fuzzes tally-crdt with cargo-fuzz (libFuzzer): the sync body decoder (`sync_request`), the
# G/PN-Counter merge laws (`merge`) and the counter lattice's laws over histories (`lattice`). The targets are in fuzz/ (its own workspace, not a member of the
# root one).
#
#   bash scripts/fuzz.sh                      # build, then every target for FUZZ_SECONDS (20 s) each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh     # the 10-minute run per target (docs/reliability.md)
#   bash scripts/fuzz.sh merge                # only the named targets
#   bash scripts/fuzz.sh build [TARGET...]    # only build (scripts/test.sh's build phase)
#   bash scripts/fuzz.sh run [TARGET...]      # only run what `build` made; builds nothing
#                                             # (scripts/test.sh's fuzz lane)
#
# - Needs a nightly toolchain (libFuzzer's instrumentation): without one it says so and exits 0,
#   or 1 under CI=true (CI must not pass with the fuzzing skipped).
# - Installs cargo-fuzz CARGO_FUZZ_VERSION when it is missing.
# - Builds with debug assertions (so overflow checks and debug_assert! are on) and without a
#   sanitizer (`-s none`): tally-crdt and the targets forbid `unsafe`, so AddressSanitizer,
#   cargo-fuzz's default, has no memory errors to find there, and it made the build and every
#   execution slower. Runs the built libFuzzer binaries themselves (what `cargo fuzz run` runs
#   after its build): replays every input in fuzz/regressions/<target>-*, then fuzzes from
#   fuzz/corpus/<target>/ (grown across runs, seeded from fuzz/seeds/<target>/, with
#   fuzz/<target>.dict when present).
# - A crash is written to fuzz/artifacts/<target>/ and makes the script exit 1 after the other
#   targets ran. Reduce one with `cargo +nightly fuzz tmin -a -s none <target> <artifact>`.
# - Prints, per target, executions, coverage (libFuzzer's `cov` edges and `ft` features) and
#   corpus size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CARGO_FUZZ_VERSION=0.13.2
mode=all
case "${1:-}" in build|run) mode=$1; shift ;; esac
targets=(sync_request merge lattice)
[ $# -gt 0 ] && targets=("$@")

log() { printf '[fuzz] %s\n' "$*" >&2; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  message="no nightly Rust toolchain (cargo-fuzz needs one: rustup toolchain install nightly --profile minimal)"
  if [ "${CI:-}" = true ]; then
    log "error: $message; under CI=true the fuzzing is not skipped"
    exit 1
  fi
  log "skipped: $message"
  exit 0
fi

# Where cargo fuzz build puts the targets (release profile, with -a's debug assertions).
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

# Debug assertions, no sanitizer.
flags=(-a -s none)
if [ "$mode" != run ]; then
  if ! cargo +nightly fuzz --version 2>/dev/null | grep -qw "$CARGO_FUZZ_VERSION"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
      { log "error: cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"; exit 1; }
  fi
  log "building ${targets[*]} (nightly, debug assertions, no sanitizer)"
  for target in "${targets[@]}"; do
    cargo +nightly fuzz build "${flags[@]}" "$target"
  done
  [ "$mode" = build ] && exit 0
fi
for target in "${targets[@]}"; do
  [ -x "$bin_dir/$target" ] ||
    { log "error: $bin_dir/$target is missing: build it first (bash scripts/fuzz.sh build)"; exit 1; }
done

failed=()
summary=()
for target in "${targets[@]}"; do
  regressed=0
  for input in fuzz/regressions/"$target"-*; do
    [ -e "$input" ] || continue
    if ! replay=$("$bin_dir/$target" "$input" 2>&1); then
      log "$target: regression input $input crashes again:"
      grep -A1 'panicked at' <<<"$replay" >&2 || tail -20 <<<"$replay" >&2
      regressed=1
    fi
  done
  if [ $regressed -eq 1 ]; then
    failed+=("$target (regression)")
    summary+=("$target: a regression input in fuzz/regressions/ crashes again; not fuzzed")
    continue
  fi

  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  dirs=("$corpus")
  [ -d "fuzz/seeds/$target" ] && dirs+=("fuzz/seeds/$target")
  options=("-max_total_time=$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ -f "fuzz/$target.dict" ] && options+=("-dict=fuzz/$target.dict")
  fuzz_log=$(mktemp)
  log "$target: fuzzing for ${FUZZ_SECONDS}s (log: $fuzz_log)"
  start=$SECONDS
  if "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" "${options[@]}" "${dirs[@]}" >"$fuzz_log" 2>&1; then
    outcome=ok
  else
    outcome=CRASH
    failed+=("$target")
    tail -40 "$fuzz_log" >&2
  fi
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/S ..." (or the crash's).
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$fuzz_log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$fuzz_log" | tail -1)
  line="$target: $outcome, ${runs:-?} executions in $((SECONDS - start))s, ${cov:-no coverage line}"
  summary+=("$line")
  log "$line"
done

printf '\n' >&2
for line in "${summary[@]}"; do log "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]} (new crashes are written to fuzz/artifacts/<target>/)"
  exit 1
fi
log "no crash"
