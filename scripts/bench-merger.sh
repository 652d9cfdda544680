#!/usr/bin/env bash
# Benchmarks the merger against the baselines it must beat, side by side in one run, and
# prints the figures and ratios (docs/benchmarks.md). Not part of scripts/test.sh; about
# 11 minutes.
#
# This script installs what is missing and builds; `tally-bench compare merger` (bench/src/merger/)
# does the rest: it starts the release merger (on SQLite, and on a throwaway Postgres
# cluster), Redis and a hello-world server on free loopback ports in a temp dir, drives them
# with its own sync load, wrk and redis-benchmark, computes the ratios, stops everything it
# started, and exits non-zero when a correctness check fails (a sync not acknowledged or
# answered wrong, a count read back wrong, a non-2xx read). A missed target is reported, not
# an error.
#
#   P2   merger durable slot-updates/s on SQLite / one autocommitted SQLite UPDATE per hit  >= 40
#   P3   the same merger figure / Redis INCR, one command per hit, no persistence       >= 2.5
#   P4   wrk on the merger's GET /v1/counters/{id} / wrk on a hello-world axum server     >= 0.9
#   P15  the same merger figure / SQLite's own batched upsert of the same rows, in-process,
#        in transactions of the merger's mean rows per commit (the store's limit)         >= 0.5
#   P13  two mergers on one Postgres database, slot-updates/s / one Postgres UPDATE per
#        hit, both synchronous_commit=on on the same server                               >= 10
#   P16  the same two mergers / Postgres's own batched upsert of the same rows, in-process,
#        two writers, in transactions of the mergers' mean rows per commit                >= 0.5
#        (and P13's ceiling: that upsert / the naive UPDATE, shown beside P13)
#   and: the share of the two mergers' slot updates that Postgres made in place (HOT), from
#        pg_stat_user_tables (issue 27's goal: >= 0.9)
#   and: a million counters (SQLite, then Postgres): fill rate, start time, memory.
#
# Installs the Debian packages it needs when missing (wrk, redis-server, redis-tools,
# postgresql; as root).
#
#   BENCH_SECONDS          seconds of each sync load and naive run (default 10)
#   BENCH_WRK_SECONDS      seconds of each wrk run (default 10)
#   BENCH_WRK_ROUNDS       wrk runs of each server, alternating (default 3)
#   BENCH_MERGER           a merger binary to measure instead of building this checkout's
#   further options go to `tally-bench compare merger` (see --help), e.g. `--phase p2,p3` for a part
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages, only the missing ones. Postgres' server binaries live off PATH.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null ||
  missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them, or run as root"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

target_dir=${CARGO_TARGET_DIR:-target}
if [ -n "${BENCH_MERGER:-}" ]; then
  merger=$BENCH_MERGER
  log "building tally-bench (release); measuring the merger $merger"
  cargo build --release --locked -p tally-bench
else
  merger=$target_dir/release/tally-merger
  log "building the merger and tally-bench (release)"
  cargo build --release --locked -p tally-merger -p tally-bench
fi

exec cargo run --release --locked -p tally-bench -- compare merger \
  --merger "$merger" \
  --seconds "${BENCH_SECONDS:-10}" \
  --wrk-seconds "${BENCH_WRK_SECONDS:-10}" \
  --wrk-rounds "${BENCH_WRK_ROUNDS:-3}" \
  "$@"
