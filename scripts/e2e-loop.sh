#!/usr/bin/env bash
# Runs end-to-end tests again and again, from the binaries scripts/test.sh built (it builds
# nothing), and counts what happened: to show that a test holds up, e.g. while the test command
# runs beside it (docs/testing.md, "Loops").
#
#   bash scripts/e2e-loop.sh RUNS FILTER...      # e.g. 10 milestones:: presence::
#
# Each run is the e2e test binary with one FILTER (libtest's substring match, `--exact` not
# implied), one after the other, RUNS times over. Logs go to <target>/tally-test/loop/. Prints a
# line per run (passed or FAILED, seconds, and how many answers of `503` and timeouts its log
# names), then the totals; exits 1 if any run failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
runs=$1; shift

built=${CARGO_TARGET_DIR:-$PWD/target}/tally-test
list=$built/native.tsv
[ -f "$list" ] || { echo "no $list: run scripts/test.sh (or its build phase) first" >&2; exit 1; }
e2e=$(awk -F'\t' '$1 == "test" && $2 == "tally-e2e" && $4 == "e2e" { print $5 }' "$list")
dir=$(awk -F'\t' '$1 == "test" && $2 == "tally-e2e" && $4 == "e2e" { print $6 }' "$list")
merger=$(awk -F'\t' '$1 == "bin" && $4 == "tally-merger" { print $5 }' "$list")
[ -x "$e2e" ] && [ -x "$merger" ] || { echo "the e2e binary or the merger binary is missing: run scripts/test.sh first" >&2; exit 1; }
export TALLY_E2E_WORKER_BUILD=${TALLY_E2E_WORKER_BUILD:-$PWD/edge/build}
export TALLY_E2E_MERGER_BIN=$merger
export TALLY_TIMINGS=${TALLY_TIMINGS:-$built/loop/timings.tsv}

logs=$built/loop
mkdir -p "$logs"
passed=0 failed=0 total_503=0 total_timeouts=0
for run in $(seq 1 "$runs"); do
  for filter in "$@"; do
    log=$logs/$(tr -c 'a-zA-Z0-9_\n' '-' <<<"$filter" | head -c 60)-$run.log
    start=$SECONDS
    if (cd "$dir" && "$e2e" "$filter" --nocapture) >"$log" 2>&1; then
      outcome=passed; passed=$((passed + 1))
    else
      outcome=FAILED; failed=$((failed + 1))
    fi
    # An answer of 503 in the log (tests print the status of any unexpected answer), and
    # requests that ran into their timeout.
    n503=$(grep -cE '\b503\b' "$log" || true)
    ntimeout=$(grep -ciE 'operation timed out|TimedOut|timed out' "$log" || true)
    total_503=$((total_503 + n503)); total_timeouts=$((total_timeouts + ntimeout))
    printf '%s run %d: %s in %ds; lines naming 503: %d, timeouts: %d (%s)\n' \
      "$filter" "$run" "$outcome" $((SECONDS - start)) "$n503" "$ntimeout" "${log#"$PWD"/}"
  done
done
printf 'total: %d passed, %d failed; lines naming 503: %d, timeouts: %d\n' \
  "$passed" "$failed" "$total_503" "$total_timeouts"
[ "$failed" -eq 0 ]
