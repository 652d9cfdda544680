#!/usr/bin/env bash
# Benchmarks the edge worker under `wrangler dev` (the real workerd runtime) side by side with
# its baseline in one run, and prints the ratios (docs/benchmarks.md). Loopback only, free
# ports, temp dirs; every process it starts is stopped on exit. Not part of scripts/test.sh.
#
#   P5  tally edge hits/s (PUT /bench/counter)
#       / a minimal JavaScript Durable Object counter, one storage write per hit   target >= 1.0
#       (same wrk, same connections; the edge with SHARDS=1, one object like the baseline,
#       and with SHARDS=4 as deployed)
#   P6  edge cached reads/s (GET) / edge hits/s                                    target >= 3
#   P7  size of the deployed Wasm module, raw and gzip                             target <= 250 KiB gzip
#
#   BENCH_WRK_SECONDS      duration of each wrk run (default 10)
#   BENCH_CONNECTIONS      wrk connections (default 32)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

wrk_seconds=${BENCH_WRK_SECONDS:-10}
connections=${BENCH_CONNECTIONS:-32}
token=bench-edge-token-0123456789

log() { printf '\n[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

bash scripts/bootstrap.sh
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || die "wrk is missing: install it (Debian package wrk), or run as root"
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_status() { # URL STATUS: until URL answers STATUS (3 minutes at most)
  for _ in $(seq 900); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X "${3:-GET}" "$1")" = "$2" ] && return 0
    sleep 0.2
  done
  die "$1 does not answer $2"
}

# rps SCRIPT_ARGS... : requests/s from one wrk run; fails on any non-2xx or socket error.
rps() {
  local out
  out=$(wrk -t2 -c"$connections" -d"${wrk_seconds}s" "$@")
  echo "$out" >&2
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then die "wrk saw errors against $*"; fi
  echo "$out" | awk '/Requests\/sec/ { print $2 }'
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

log "building the merger and the edge worker"
cargo build --release --locked -p tally-merger
bash scripts/build-edge.sh >/dev/null
wasm=edge/build/index_bg.wasm
wasm_raw=$(stat -c %s "$wasm")
wasm_gz=$(gzip -9c "$wasm" | wc -c)

merger_port=$(free_port)
setsid target/release/tally-merger --listen "127.0.0.1:$merger_port" \
  --database-url "sqlite://$work/merger/tally.db" --sync-token "$token" --log warn &
pids+=($!)
wait_status "http://127.0.0.1:$merger_port/readyz" 200

# start_edge SHARDS: the tally worker under wrangler dev, in its own process group (so the
# cleanup stops workerd too); sets $edge_url. Not run in $(...): the pid must reach $pids.
start_edge() {
  local port inspector
  port=$(free_port); inspector=$(free_port)
  setsid node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$port" --inspector-port "$inspector" \
    --persist-to "$work/edge-$1" --log-level error --show-interactive-dev-session=false \
    --var "MERGER_URL:http://127.0.0.1:$merger_port" --var "SYNC_TOKEN:$token" --var "SHARDS:$1" \
    >/dev/null 2>&1 &
  pids+=($!)
  edge_url="http://127.0.0.1:$port"
  wait_status "$edge_url/_ready" 404
}

log "P5 baseline: minimal JavaScript Durable Object counter"
js_port=$(free_port); js_inspector=$(free_port)
setsid bash -c 'cd bench/js-counter && exec ../../node_modules/.bin/wrangler dev --ip 127.0.0.1 \
  --port "$1" --inspector-port "$2" --persist-to "$3" --log-level error --show-interactive-dev-session=false' \
  js-counter "$js_port" "$js_inspector" "$work/js" >/dev/null 2>&1 &
pids+=($!)
wait_status "http://127.0.0.1:$js_port/bench" 200
js_hits=$(rps -s bench/wrk/put.lua "http://127.0.0.1:$js_port/bench")

log "P5: tally edge, SHARDS=1 (one object, like the baseline)"
start_edge 1
edge1=$edge_url
curl -fsS -X PUT "$edge1/bench/counter" >/dev/null
edge1_hits=$(rps -s bench/wrk/put.lua "$edge1/bench/counter")
log "P6: cached reads on the same edge"
edge1_reads=$(rps "$edge1/bench/counter")
log "ceiling: OPTIONS answered by the Worker alone (no Durable Object)"
edge1_ceiling=$(rps -s bench/wrk/options.lua "$edge1/bench/counter")

log "P5: tally edge, SHARDS=4 (as deployed)"
start_edge 4
edge4=$edge_url
curl -fsS -X PUT "$edge4/bench/counter" >/dev/null
edge4_hits=$(rps -s bench/wrk/put.lua "$edge4/bench/counter")
edge4_reads=$(rps "$edge4/bench/counter")

# The hits all reached the merger: the benchmark measured real, durable work.
sleep 5
merger_count=$(curl -fsS "http://127.0.0.1:$merger_port/v1/counters/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')

cat <<EOF_TABLE

edge benchmarks (wrk -t2 -c$connections -d${wrk_seconds}s, wrangler dev, loopback, one run)
  JS Durable Object counter, PUT        $js_hits req/s
  tally edge SHARDS=1, PUT              $edge1_hits req/s
  tally edge SHARDS=4, PUT              $edge4_hits req/s
  tally edge SHARDS=1, GET (cached)     $edge1_reads req/s
  tally edge SHARDS=4, GET (cached)     $edge4_reads req/s
  Worker alone (OPTIONS, no object)     $edge1_ceiling req/s   (wrangler dev's ceiling)
  merger count of all PUTs, 5 s later   $merger_count

  P5  tally (SHARDS=1) / JS counter     $(ratio "$edge1_hits" "$js_hits")   target >= 1.0
      tally (SHARDS=4) / JS counter     $(ratio "$edge4_hits" "$js_hits")
  P6  cached reads / hits (SHARDS=1)    $(ratio "$edge1_reads" "$edge1_hits")   target >= 3
      cached reads / hits (SHARDS=4)    $(ratio "$edge4_reads" "$edge4_hits")
  P7  Wasm module                       $wasm_raw bytes raw, $wasm_gz bytes gzip -9 ($(python3 -c "print(f'{$wasm_gz/1024:.1f}')") KiB)   target <= 250 KiB gzip
EOF_TABLE
