#!/usr/bin/env bash
# Starts tally locally, after installing whatever is missing (scripts/bootstrap.sh): the merger
# on embedded SQLite (./data/tally.db) with a fresh dev sync token. Prints the URLs and curl
# examples; Ctrl-C stops everything. The README's run command.
#
#   TALLY_MERGER_PORT   merger port (default 8790)
#   TALLY_DATABASE_URL  database (default sqlite://./data/tally.db)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

port=${TALLY_MERGER_PORT:-8790}
export TALLY_LISTEN="127.0.0.1:$port"
export TALLY_DATABASE_URL=${TALLY_DATABASE_URL:-sqlite://./data/tally.db}
# A fresh secret per run, shared by the merger and (with the edge) the worker's .dev.vars.
TALLY_SYNC_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export TALLY_SYNC_TOKEN

echo "building the merger (release)..." >&2
cargo build --release --locked -p tally-merger

merger_pid=
stop() {
  trap - INT TERM EXIT
  if [ -n "$merger_pid" ] && kill -0 "$merger_pid" 2>/dev/null; then
    echo "stopping the merger..." >&2
    kill -TERM "$merger_pid" 2>/dev/null || true
    wait "$merger_pid" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT

target/release/tally-merger &
merger_pid=$!

merger="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS "$merger/readyz" >/dev/null 2>&1 && break
  kill -0 "$merger_pid" 2>/dev/null || { echo "the merger exited; see the log above" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$merger/readyz" >/dev/null || { echo "the merger is not ready after 10 s" >&2; exit 1; }

replica=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
cat <<EOF_USAGE

tally is running.
  merger     $merger   (database: $TALLY_DATABASE_URL)
  sync token $TALLY_SYNC_TOKEN

Send a sync as an edge replica would (slot totals, not increments; repeat it: nothing changes):
  curl -sS $merger/v1/sync -H 'Authorization: Bearer $TALLY_SYNC_TOKEN' -H 'Content-Type: application/json' \\
    -d '{"version":1,"replica":"$replica","region":"local","counters":[{"id":"home","kind":"g","p":3}]}'

Read the global count, list counters, see metrics:
  curl -sS $merger/v1/counters/home
  curl -sS '$merger/v1/counters?limit=10'
  curl -sS $merger/metrics

Ctrl-C stops it.
EOF_USAGE
wait "$merger_pid"
