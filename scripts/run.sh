#!/usr/bin/env bash
# Starts the whole tally system locally, after installing whatever is missing
# (scripts/bootstrap.sh): the merger on embedded SQLite and the edge worker under
# `wrangler dev`, wired together with a fresh dev sync token. Prints the URLs and curl
# examples; Ctrl-C stops both. The README's run command.
#
#   TALLY_MERGER_PORT   merger port (default 8790)
#   TALLY_EDGE_PORT     edge port (default 8787)
#   TALLY_DATABASE_URL  merger database (default sqlite://./data/tally.db)
#   Durable Object storage persists in .wrangler/state between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

merger_port=${TALLY_MERGER_PORT:-8790}
edge_port=${TALLY_EDGE_PORT:-8787}
merger="http://127.0.0.1:$merger_port"
edge="http://127.0.0.1:$edge_port"
export TALLY_LISTEN="127.0.0.1:$merger_port"
export TALLY_DATABASE_URL=${TALLY_DATABASE_URL:-sqlite://./data/tally.db}
# A fresh secret per run, shared by the merger and the worker.
TALLY_SYNC_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export TALLY_SYNC_TOKEN
# The application's write key (larger deltas, gauge writes), also fresh per run.
write_key=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
# The worker reads its local secrets from .dev.vars (git-ignored).
# The secret behind derived unique-visitor keys (a fresh one per run: derived uniques of a
# day start again after a restart).
unique_salt=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
# The key session tokens are signed with (a fresh one per run: tokens of an earlier run are
# no session).
session_key=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
printf 'SYNC_TOKEN=%s\nMERGER_URL=%s\nWRITE_KEY=%s\nUNIQUE_SALT=%s\nSESSION_KEY=%s\n' "$TALLY_SYNC_TOKEN" "$merger" "$write_key" "$unique_salt" "$session_key" > .dev.vars

echo "building the merger (release)..." >&2
cargo build --release --locked -p tally-merger

merger_pid=
edge_pid=
stop() {
  trap - INT TERM EXIT
  if [ -n "$edge_pid" ]; then
    echo "stopping the edge..." >&2
    kill -TERM -- "-$edge_pid" 2>/dev/null || true
    wait "$edge_pid" 2>/dev/null || true
  fi
  if [ -n "$merger_pid" ] && kill -0 "$merger_pid" 2>/dev/null; then
    echo "stopping the merger..." >&2
    kill -TERM "$merger_pid" 2>/dev/null || true
    wait "$merger_pid" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT

# wait_for NAME URL PID CODE: until URL answers with HTTP status CODE, or the process dies.
wait_for() {
  for _ in $(seq 1800); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$2" 2>/dev/null)" = "$4" ] && return 0
    kill -0 "$3" 2>/dev/null || { echo "the $1 exited; see the log above" >&2; exit 1; }
    sleep 0.1
  done
  echo "the $1 is not answering after 3 minutes" >&2
  exit 1
}

target/release/tally-merger &
merger_pid=$!
wait_for merger "$merger/readyz" "$merger_pid" 200

# Own process group, so Ctrl-C handling can stop wrangler and its workerd together.
echo "building and starting the edge worker under wrangler dev..." >&2
setsid node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$edge_port" \
  --var ALLOW_REGION_OVERRIDE:true --show-interactive-dev-session=false &
edge_pid=$!
# A path that is no counter: the Worker answers 404 JSON once it serves.
wait_for edge "$edge/_ready" "$edge_pid" 404

cat <<EOF_USAGE

tally is running.
  edge       $edge   (Durable Objects in .wrangler/state)
  merger     $merger   (database: $TALLY_DATABASE_URL)
  dashboard  $merger/
  sync token $TALLY_SYNC_TOKEN   (also in .dev.vars for the worker)
  write key  $write_key   (your backend's key for larger deltas and gauges)

Count a hit at the edge (public: +1; the answer includes it), keeping the session token so
your next reads never show less than you have seen:
  curl -sS -D - -X PUT $edge/home/counter             # tally-session: 1.<key id>.<mac>.g:home=1;
  curl -sS -H 'Tally-Session: <that header, as received>' $edge/home/counter
Add 5, and go down on a gauge, with the write key:
  curl -sS -X PUT $edge/home/counter -H 'Authorization: Bearer $write_key' -H 'Content-Type: application/json' -d '{"delta": 5}'
  curl -sS -X PUT $edge/viewers/gauge -H 'Authorization: Bearer $write_key' -H 'Content-Type: application/json' -d '{"delta": -1}'
Read many at once (a page of like buttons):
  curl -sS '$edge/counter?ids=home,about,pricing'
Try a region (allowed locally only): -H 'X-Tally-Region: eu'

Read at the edge, and the global count at the merger (synced every 2 s):
  curl -sS $edge/home/counter
  curl -sS $merger/v1/counters/home
  curl -sS '$merger/v1/counters?limit=10'
  curl -sS $merger/metrics

Ctrl-C stops both.
EOF_USAGE
wait "$merger_pid" "$edge_pid"
