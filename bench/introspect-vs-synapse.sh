#!/usr/bin/env bash
# Introspection as Synapse asks it, with a real Synapse 1.163.2 beside mxqr (delegated mode,
# scripts/synapse-test-server.sh): `mxqr serve` (release build) in synapse mode, a user and a
# live token from `mxqr admin`, one request through Synapse so that the device is provisioned,
# then `mxqr-bench introspect` at each concurrency for BENCH_SECONDS. Prints requests/s,
# p50/p99/max latency, and the memory of mxqr and of Synapse side by side.
#
#   bench/introspect-vs-synapse.sh     env: BENCH_CONCURRENCY (default "1 8 64"),
#                                      BENCH_SECONDS (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY="${BENCH_CONCURRENCY:-1 8 64}"
SECONDS_EACH="${BENCH_SECONDS:-10}"

echo "==> building mxqr and mxqr-bench (release)" >&2
cargo build --release --locked -q -p mxqr -p mxqr-bench
mxqr_bin=target/release/mxqr
bench_bin=target/release/mxqr-bench

work=$(mktemp -d /tmp/mxqr-introspect.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

synapse_port=$(free_port)
mxqr_port=$(free_port)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"
export MXQR_SERVER_NAME=mxqr.test MXQR_HOMESERVER__MODE=synapse \
  MXQR_HOMESERVER__SYNAPSE_URL="http://127.0.0.1:$synapse_port" \
  MXQR_HOMESERVER__SECRET_PATH="$work/secret" MXQR_LOG=warn
"$mxqr_bin" admin --data-dir "$work/mxqr" user add alice >/dev/null
"$mxqr_bin" serve --listen "127.0.0.1:$mxqr_port" --data-dir "$work/mxqr" \
  >"$work/mxqr.log" 2>&1 &
mxqr_pid=$!
pids+=("$mxqr_pid")
mxqr_url="http://127.0.0.1:$mxqr_port"
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$mxqr_url/health" 2>/dev/null && break
  sleep 0.1
done

echo "==> starting Synapse" >&2
bash scripts/synapse-test-server.sh --mxqr-url "$mxqr_url/" --server-name mxqr.test \
  --port "$synapse_port" --secret-file "$work/secret" --dir "$work/synapse" >"$work/synapse.out" &
pids+=("$!")
for _ in $(seq 1 2400); do
  grep -q '^synapse_pid=' "$work/synapse.out" 2>/dev/null && break
  sleep 0.1
done
synapse_pid=$(sed -n 's/^synapse_pid=//p' "$work/synapse.out")
[[ -n $synapse_pid ]] || { echo "error: Synapse did not start" >&2; exit 1; }

"$mxqr_bin" admin --data-dir "$work/mxqr" issue-token alice --device-id BENCHDEVICE --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' >"$work/token"
# Through Synapse once: its first introspection provisions the user and the device.
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$work/token")" \
  "http://127.0.0.1:$synapse_port/_matrix/client/v3/account/whoami")
[[ $status == 200 ]] || { echo "error: Synapse refused mxqr's token ($status)" >&2; exit 1; }

for c in $CONCURRENCY; do
  echo
  "$bench_bin" introspect --url "$mxqr_url" --secret-file "$work/secret" \
    --token-file "$work/token" --concurrency "$c" --seconds "$SECONDS_EACH" \
    --server-pid "$mxqr_pid"
done
echo
for who in mxqr:$mxqr_pid synapse:$synapse_pid; do
  pid=${who#*:}
  awk -v who="${who%%:*}" '/^VmRSS:/ {rss=$2} /^VmHWM:/ {hwm=$2}
    END {printf "%-8s RSS %.1f MiB (peak %.1f MiB)\n", who, rss/1024, hwm/1024}' "/proc/$pid/status"
done
