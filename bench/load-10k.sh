#!/usr/bin/env bash
# 10,000 concurrent rendezvous sign-in flows (MSC4388, then MSC4108) against `mxqr serve`
# (release build by default): first one instance with the in-memory store, then two instances sharing one
# PostgreSQL database (scripts/pg-test-server.sh), each flow creating on one instance and its
# peer device reading and deleting on the other. Zero errors required (the bench exits 1
# otherwise). Prints flows/s, p50/p99 latency, errors and each server's peak RSS.
# scripts/test-all.sh (so .ci/run) runs it on the test build: about 4 minutes on 2 cores.
#
#   bench/load-10k.sh        env: LOAD_FLOWS (default 10000), LOAD_CONCURRENCY (default 10000),
#                            LOAD_PARTS (default "single pg"), LOAD_PG_THINK_MS (default 0),
#                            LOAD_RETRIES (default 5), LOAD_PROFILE (release | dev),
#                            MXQR_BIN and MXQR_BENCH_BIN (prebuilt binaries, e.g. of another
#                            commit to compare with; nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

FLOWS="${LOAD_FLOWS:-10000}"
CONCURRENCY="${LOAD_CONCURRENCY:-10000}"
PARTS="${LOAD_PARTS:-single pg}"

# Each flow in flight holds a connection in the load generator and one in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= CONCURRENCY + 1024 )) || {
  echo "error: open-file limit $(ulimit -n) is too low for $CONCURRENCY flows" >&2; exit 1; }

work=$(mktemp -d /tmp/mxqr-load.XXXXXX)
chmod 755 "$work" # run as root, PostgreSQL runs as `postgres` and must reach its directory
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -d $work/pg ]] && scripts/pg-test-server.sh stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf '==> %s\n' "$*" >&2; }

free_port() {
  local port
  while :; do
    # Below the ephemeral range (32768+), which the load generator's connections fill.
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

wait_health() {
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$1/health" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "error: server exited; log:" >&2; cat "$3" >&2; return 1; }
    sleep 0.5
  done
  echo "error: $1 did not answer" >&2
  return 1
}

# start_server NAME [ENV=VALUE…]: starts `mxqr serve`, sets $url and $pid.
start_server() {
  local name=$1 port
  shift
  port=$(free_port)
  # Rate limits are per client address, and every flow here comes from 127.0.0.1.
  env MXQR_RATE_LIMIT__ENABLED=false MXQR_HTTP__MAX_CONNECTIONS_PER_ADDRESS=0 MXQR_RENDEZVOUS__MAX_SESSIONS=100000 MXQR_LOG=warn \
    "$@" "$mxqr_bin" serve --listen "127.0.0.1:$port" --data-dir "$work/$name" \
    --public-url "http://127.0.0.1:$port/" >"$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  url="http://127.0.0.1:$port"
  wait_health "$url" "$pid" "$work/$name.log"
}

# Past its pool, the PostgreSQL store queues operations in arrival order for up to 30 s, then
# answers 503 + Retry-After; the generator retries those as clients do (LOAD_RETRIES), and
# reports how many.
RETRIES="${LOAD_RETRIES:-5}"
# LOAD_PG_THINK_MS paces the PostgreSQL flows (0.5–1.5× between steps) like real sign-ins;
# 0, the default, runs them flat out.
PG_THINK_MS="${LOAD_PG_THINK_MS:-0}"

# run_bench LABEL TRANSPORT URL PEER PROCESSES THINK_MS PID…: one run of FLOWS at CONCURRENCY, split
# over PROCESSES load generators started together (a flow with a peer instance keeps a
# connection to each, and one process may not hold more descriptors than `ulimit -n`).
# Flows/s and errors are summed; p50/p99 are the worst of the processes'.
run_bench() {
  local label=$1 transport=$2 target=$3 peer=$4 processes=$5 think=$6
  shift 6
  local pid_args=() bench_pids=() i
  for p in "$@"; do pid_args+=(--server-pid "$p"); done
  printf '%s, %s: %s flows, %s concurrent, %s ms pauses\n' "$label" "$transport" "$FLOWS" \
    "$CONCURRENCY" "$think"
  for i in $(seq 1 "$processes"); do
    "$bench_bin" rendezvous --url "$target" --peer-url "$peer" --transport "$transport" \
      --flows $((FLOWS / processes)) --concurrency $((CONCURRENCY / processes)) \
      --max-seconds 600 --require-success --retry-unavailable "$RETRIES" --think-ms "$think" "${pid_args[@]}" \
      >"$work/bench.$i" 2>&1 &
    bench_pids+=($!)
  done
  local failed=0
  for p in "${bench_pids[@]}"; do wait "$p" || failed=1; done
  cat "$work"/bench.* | awk '
    /^flows_ok/ { ok += $2 } /^flows_per_s/ { rate += $2 } /^requests_per_s/ { req += $2 }
    /^latency_p50_ms/ { if ($2 > p50) p50 = $2 } /^latency_p99_ms/ { if ($2 > p99) p99 = $2 }
    /^errors\[/ { errors += $2 } /^retried_503/ { retried += $2 }
    /^error:/ || /^error_example\[/ { print "    " $0 }
    /^server_peak_rss_mib/ { gsub(/\)/, "", $4); rss[$4] = $2 }
    END {
      printf "    flows_ok %d  flows/s %.1f  requests/s %.1f  p50 %.2f ms  p99 %.2f ms  errors %d  retried 503s %d\n",
        ok, rate, req, p50, p99, errors, retried
      for (p in rss) printf "    server %s peak RSS %.1f MiB\n", p, rss[p]
    }'
  rm -f "$work"/bench.*
  return "$failed"
}

# LOAD_PROFILE=dev reuses the test build (scripts/test-all.sh runs it that way, so CI spends
# no time on a release build); figures worth quoting come from the default, release.
PROFILE="${LOAD_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-target}"
if [[ -n ${MXQR_BIN:-} && -n ${MXQR_BENCH_BIN:-} ]]; then
  log "using the prebuilt $MXQR_BIN and $MXQR_BENCH_BIN"
  bench_bin=$MXQR_BENCH_BIN mxqr_bin=$MXQR_BIN
elif [[ $PROFILE == release ]]; then
  log "building mxqr and mxqr-bench ($PROFILE)"
  cargo build --release --locked -p mxqr -p mxqr-bench >&2
  bench_bin=$target_dir/release/mxqr-bench mxqr_bin=$target_dir/release/mxqr
else
  log "building mxqr and mxqr-bench ($PROFILE)"
  # The same command as test-all.sh's build, so nothing is rebuilt there: the binaries the
  # integration tests run are these.
  cargo test --workspace --locked --no-run >&2
  bench_bin=$target_dir/debug/mxqr-bench mxqr_bin=$target_dir/debug/mxqr
fi

if [[ " $PARTS " == *" single "* ]]; then
log "one instance, in-memory store"
start_server single
single_url=$url single_pid=$pid
for transport in msc4388 msc4108; do
  run_bench "one instance" "$transport" "$single_url" "$single_url" 1 0 "$single_pid"
done
kill "$single_pid"; wait "$single_pid" 2>/dev/null || true
fi

[[ " $PARTS " == *" pg "* ]] || exit 0
log "two instances on one PostgreSQL"
pg_url=$(scripts/pg-test-server.sh start "$work/pg" | tail -n 1)
# Pools of 64 per instance stay within the test server's 300 connections. Instances of one
# deployment share its server name (pinned in the database at first start), whatever their
# own URLs.
pg_env=(MXQR_DATABASE_URL="$pg_url" MXQR_RENDEZVOUS__POSTGRES_MAX_CONNECTIONS=64
  MXQR_SERVER_NAME=load.mxqr.test)
start_server a "${pg_env[@]}"
a_url=$url a_pid=$pid
start_server b "${pg_env[@]}"
b_url=$url b_pid=$pid
for transport in msc4388 msc4108; do
  run_bench "two instances on PostgreSQL (create on A, peer on B)" "$transport" \
    "$a_url" "$b_url" 2 "$PG_THINK_MS" "$a_pid" "$b_pid"
done
