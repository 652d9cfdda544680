#!/usr/bin/env bash
# Benchmarks the merger against the baselines it must beat, side by side in one run, and
# prints the ratios (docs/benchmarks.md). Everything runs on 127.0.0.1 with free ports and a
# temp directory; every process it starts is stopped on exit. Not part of scripts/test.sh.
#
#   P2  merger durable slot-updates/s (tally-bench sync-load, --durability full)
#       / one autocommitted SQLite UPDATE per hit (tally-bench naive)           target >= 30
#   P3  the same merger figure / Redis INCR, one command per hit, no persistence  target >= 2
#       (also shown: INCR pipelined -P 16, and both with appendfsync always)
#   P4  wrk on the merger's GET /v1/counters/{id} / wrk on a hello-world axum     target >= 0.8
#       server (tally-bench hello); the two alternate for several rounds and the
#       medians are compared, because one wrk run on a shared 2-core machine is noisy
#
# Installs the Debian packages it needs when missing (wrk, redis-server, redis-tools; as root).
# A missed target is reported, not an error; errors (a failed sync, a wrong count, a non-2xx
# read) stop the script with a non-zero status.
#
#   BENCH_SECONDS          duration of sync-load and of naive (default 10)
#   BENCH_WRK_SECONDS      duration of each wrk run (default 10)
#   BENCH_WRK_ROUNDS       wrk runs of each server, alternating (default 3)
#   BENCH_REDIS_REQUESTS   INCRs per redis-benchmark run, 10x that when pipelined (default 200000)
#   BENCH_CLIENTS          sync-load clients (default 32)
#   BENCH_REPLICAS         replica incarnations per sync-load client (default 2)
#   BENCH_COUNTERS_PER_SYNC  counters in each sync (default 500)
#   BENCH_NAIVE_CLIENTS    naive clients (default 8)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${BENCH_SECONDS:-10}
wrk_seconds=${BENCH_WRK_SECONDS:-10}
wrk_rounds=${BENCH_WRK_ROUNDS:-3}
redis_requests=${BENCH_REDIS_REQUESTS:-200000}
clients=${BENCH_CLIENTS:-32}
replicas=${BENCH_REPLICAS:-2}
per_sync=${BENCH_COUNTERS_PER_SYNC:-500}
naive_clients=${BENCH_NAIVE_CLIENTS:-8}

log() { printf '\n[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages, only the missing ones.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them, or run as root"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required (free ports)"
command -v curl >/dev/null || die "curl is required"

log "building the merger and tally-bench (release)"
cargo build --release --locked -p tally-merger -p tally-bench
merger_bin=target/release/tally-merger
bench_bin=target/release/tally-bench

# --- Temp directory and the processes started here, both gone on exit.
work=$(mktemp -d "${TMPDIR:-/tmp}/tally-bench.XXXXXX")
pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -s "$work/merger.log" ]; then
    echo "[bench] last lines of the merger's log:" >&2
    tail -n 20 "$work/merger.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http NAME URL PID: until URL answers 200 (30 s at most), or the process dies.
wait_http() {
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$2")" = 200 ] && return 0
    kill -0 "$3" 2>/dev/null || die "$1 exited before it answered"
    sleep 0.1
  done
  die "$1 did not answer $2 within 30 s"
}

# field NAME FILE: the value of NAME=... on the summary line in FILE.
field() {
  grep -o "\\b$1=[^ ]*" "$2" | tail -n 1 | cut -d= -f2
}

# ratio A B: A / B with one decimal.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'
}

# verdict VALUE TARGET: "met" or "MISSED".
verdict() {
  awk -v v="$1" -v t="$2" 'BEGIN { print (v != "n/a" && v + 0 >= t + 0) ? "met" : "MISSED" }'
}

# redis_incr PORT ARGS...: INCR requests per second reported by redis-benchmark.
redis_incr() {
  local port=$1; shift
  redis-benchmark -h 127.0.0.1 -p "$port" -t incr -c 50 -q "$@" 2>&1 | tr '\r' '\n' |
    awk '/requests per second/ { for (i = 1; i < NF; i++) if ($(i + 1) == "requests") rps = $i } END { if (rps == "") exit 1; print rps }'
}

# wrk_rps NAME URL: requests/s of wrk -t2 -c64; any non-2xx answer or socket error is fatal.
wrk_rps() {
  local out="$work/wrk-$1.txt" rps
  wrk -t2 -c64 -d"${wrk_seconds}s" "$2" >"$out"
  if grep -qE 'Non-2xx or 3xx responses|Socket errors' "$out"; then
    cat "$out" >&2
    die "wrk saw errors on $2"
  fi
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  echo "wrk $1: $rps req/s, latency $(awk '/Latency/ { print "avg " $2 ", max " $4 }' "$out")" >&2
  echo "$rps"
}

# median VALUES...: the middle value (the lower one of the two middle values for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# --- The merger, on a fresh database, durability full.
token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
merger_port=$(free_port)
merger="http://127.0.0.1:$merger_port"
"$merger_bin" --listen "127.0.0.1:$merger_port" --database-url "sqlite://$work/tally.db" \
  --sync-token "$token" --durability full --log warn >"$work/merger.log" 2>&1 &
pids+=($!)
wait_http merger "$merger/healthz" "${pids[-1]}"

# --- P2 and P3 numerator: the merger under sync load.
log "sync-load: $clients clients x $replicas replicas, $per_sync counters per sync, ${seconds}s"
"$bench_bin" sync-load --url "$merger" --token "$token" --seconds "$seconds" --clients "$clients" \
  --replicas-per-client "$replicas" --counters-per-sync "$per_sync" | tee "$work/sync-load.txt"
merger_updates=$(field slot_updates_per_sec "$work/sync-load.txt")
merger_p50=$(field p50_ms "$work/sync-load.txt")
merger_p99=$(field p99_ms "$work/sync-load.txt")

# --- P2 denominator: one autocommitted UPDATE per hit.
log "naive: $naive_clients clients, one autocommitted UPDATE per hit, ${seconds}s"
"$bench_bin" naive --db "$work/naive.db" --seconds "$seconds" --clients "$naive_clients" |
  tee "$work/naive.txt"
naive_hits=$(field per_sec "$work/naive.txt")

# --- P3 denominator: Redis INCR on loopback.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --daemonize no --loglevel warning >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
aof_port=$(free_port)
mkdir "$work/aof"
redis-server --port "$aof_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
  --dir "$work/aof" --daemonize no --loglevel warning >"$work/redis-aof.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$aof_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
log "redis-benchmark INCR: $redis_requests requests, 50 clients"
redis_p1=$(redis_incr "$redis_port" -n "$redis_requests")
redis_p16=$(redis_incr "$redis_port" -n "$((redis_requests * 10))" -P 16)
aof_p1=$(redis_incr "$aof_port" -n "$redis_requests")
aof_p16=$(redis_incr "$aof_port" -n "$((redis_requests * 10))" -P 16)
echo "INCR/s: -P 1 $redis_p1, -P 16 $redis_p16; with appendfsync always: -P 1 $aof_p1, -P 16 $aof_p16" >&2

# --- P4: reads of one counter (created by one sync) vs a hello-world server.
log "wrk -t2 -c64 -d${wrk_seconds}s, $wrk_rounds rounds: merger GET /v1/counters/{id} and tally-bench hello, in turn"
curl -fsS -o /dev/null -X POST "$merger/v1/sync" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' \
  --data '{"version":1,"replica":"0000000000000000000000000000b00c","region":"bench","counters":[{"id":"bench-read","kind":"g","p":715}]}'
curl -fsS "$merger/v1/counters/bench-read" >&2
echo >&2
hello_port=$(free_port)
"$bench_bin" hello --listen "127.0.0.1:$hello_port" >"$work/hello.log" 2>&1 &
pids+=($!)
wait_http hello "http://127.0.0.1:$hello_port/" "${pids[-1]}"
merger_runs=()
hello_runs=()
for _ in $(seq "$wrk_rounds"); do
  rps=$(wrk_rps merger "$merger/v1/counters/bench-read")
  merger_runs+=("$rps")
  rps=$(wrk_rps hello "http://127.0.0.1:$hello_port/")
  hello_runs+=("$rps")
done
merger_reads=$(median "${merger_runs[@]}")
hello_reads=$(median "${hello_runs[@]}")

kill -0 "${pids[0]}" 2>/dev/null || die "the merger exited during the run"

p2=$(ratio "$merger_updates" "$naive_hits")
p3=$(ratio "$merger_updates" "$redis_p1")
p4=$(awk -v a="$merger_reads" -v b="$hello_reads" 'BEGIN { printf "%.2f", a / b }')
cat <<EOF

tally merger benchmarks ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores)
| figure | value |
|---|---:|
| merger durable slot-updates/s (sync-load, ${clients}x${replicas} replicas, ${per_sync}/sync, p50 ${merger_p50} ms, p99 ${merger_p99} ms) | $merger_updates |
| naive SQLite UPDATE per hit, hits/s ($naive_clients clients, WAL, synchronous=FULL) | $naive_hits |
| Redis INCR/s, -c 50, one command per hit, no persistence | $redis_p1 |
| Redis INCR/s, -c 50 -P 16, no persistence | $redis_p16 |
| Redis INCR/s, -c 50, appendfsync always | $aof_p1 |
| Redis INCR/s, -c 50 -P 16, appendfsync always | $aof_p16 |
| merger GET /v1/counters/{id}, req/s (wrk -t2 -c64 -d${wrk_seconds}s, median of: ${merger_runs[*]}) | $merger_reads |
| hello-world axum, req/s (same wrk, median of: ${hello_runs[*]}) | $hello_reads |

| ratio | value | target | |
|---|---:|---:|---|
| P2 merger / naive SQLite | $p2 | >= 30 | $(verdict "$p2" 30) |
| P3 merger / Redis INCR | $p3 | >= 2 | $(verdict "$p3" 2) |
| P4 merger reads / hello | $p4 | >= 0.8 | $(verdict "$p4" 0.8) |
EOF
