#!/usr/bin/env bash
# Benchmarks the edge worker under `wrangler dev` (the real workerd runtime) side by side with
# its baseline in one run, and prints the figures and ratios (docs/benchmarks.md). Not part of
# scripts/test.sh; about 10 minutes.
#
# This script installs what is missing and builds; `tally-bench compare edge` (bench/src/edge/) does
# the rest: it starts the merger, the JavaScript baseline and the worker on free loopback
# ports in a temp dir, drives them with wrk and its own checking client, computes the ratios,
# stops everything it started, and exits non-zero when a correctness check fails (a hit lost
# or counted twice, a read below what its client was shown, a non-2xx answer).
#
#   P5   tally hits/s / the JavaScript Durable Object counter (bench/js-counter)    >= 1.0
#   P6   edge reads/s / edge hits/s, Zipf over 10,000 counters, hits interleaved   >= 3
#   P11  PUT p99 with the merger stopped (SIGSTOP) / with it up                     <= 1.5
#   P12  merger commits per edge read                                               0
#   exact  PUT p99 near a milestone (the exact path) / with none, one object        <= 2
#        merger stopped: near hits that waited, per SYNC_TIMEOUT_MS after the first <= 1
#   and: an object holding 100,000 counters against a near-empty one (first answer
#   after a restart, memory, storage), JS <-> Wasm crossings and storage calls per hit.
#
# The worker is built into target/bench-edge-worker, never into edge/build, so the run
# neither triggers nor races the build of a `wrangler dev` started by the tests.
#
#   BENCH_WRK_SECONDS      seconds of each measured phase (default 10)
#   BENCH_CONNECTIONS      wrk connections and load clients (default 32)
#   BENCH_ROUNDS           P5 rounds, the three workers alternating (default 3)
#   BENCH_BIG_COUNTERS     counters of the big object (default 100000; 0 skips it)
#   BENCH_ARGS             further `tally-bench compare edge` options (see --help)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

bash scripts/bootstrap.sh
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || die "wrk is missing: install it (Debian package wrk), or run as root"
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
command -v gzip >/dev/null || die "gzip is required (the Wasm module's size)"

log "building the merger and the edge worker (release)"
cargo build --release --locked -p tally-merger
target_dir=${CARGO_TARGET_DIR:-target}
# worker-build's --out-dir is relative to the crate (edge/).
bash scripts/build-edge.sh --out-dir ../target/bench-edge-worker >/dev/null

# shellcheck disable=SC2086 # BENCH_ARGS is a list of options
exec cargo run --release --locked -p tally-bench -- compare edge \
  --worker-build target/bench-edge-worker \
  --merger "$target_dir/release/tally-merger" \
  --seconds "${BENCH_WRK_SECONDS:-10}" \
  --connections "${BENCH_CONNECTIONS:-32}" \
  --rounds "${BENCH_ROUNDS:-3}" \
  --big-counters "${BENCH_BIG_COUNTERS:-100000}" \
  ${BENCH_ARGS:-}
