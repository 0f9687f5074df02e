#!/usr/bin/env bash
# Rendezvous throughput of `mxqr serve` (release build, in-memory store) against Synapse 1.163.2,
# both on loopback, both transports, 1, 8 and 64 concurrent sign-in flows. Prints a table with
# flows/s, p99 latency and their ratios, and each server's peak RSS. Installs Synapse into a
# temporary venv (with the settings of scripts/synapse-test-server.sh) and removes everything it started.
#
#   bench/rendezvous-vs-synapse.sh            env: BENCH_SECONDS (per run, default 15),
#       MXQR_BIN and MXQR_BENCH_BIN (prebuilt binaries, e.g. of another commit; nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
SYNAPSE_VERSION=1.163.2
MSC4388_UNSTABLE=/_matrix/client/unstable/io.element.msc4388/rendezvous

work=$(mktemp -d /tmp/mxqr-bench.XXXXXX)
synapse_pid=
mxqr_pid=
cleanup() {
  for pid in $mxqr_pid $synapse_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf '==> %s\n' "$*" >&2; }

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

wait_http() {
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "error: server exited; see $3" >&2; tail -n 30 "$3" >&2; return 1; }
    sleep 0.5
  done
  echo "error: $1 did not answer" >&2
  return 1
}

if [[ -n ${MXQR_BIN:-} && -n ${MXQR_BENCH_BIN:-} ]]; then
  bench_bin=$MXQR_BENCH_BIN mxqr_bin=$MXQR_BIN
else
  log "building mxqr and mxqr-bench (release)"
  cargo build --release --locked -p mxqr -p mxqr-bench >&2
  bench_bin=${CARGO_TARGET_DIR:-target}/release/mxqr-bench
  mxqr_bin=${CARGO_TARGET_DIR:-target}/release/mxqr
fi

log "installing matrix-synapse==$SYNAPSE_VERSION into a temporary venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2

log "configuring Synapse"
syn_port=$(free_port)
closed_port=$(free_port) # nothing listens there: open-mode rendezvous never calls the auth service
mkdir -p "$work/synapse"
(
  cd "$work/synapse"
  "$work/venv/bin/python" -m synapse.app.homeserver --server-name localhost \
    --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null
)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/synapse/mas_secret"
cat >"$work/synapse/overrides.yaml" <<YAML
public_baseurl: "http://127.0.0.1:$syn_port/"
listeners:
  - port: $syn_port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
experimental_features:
  msc4108_enabled: true
  msc4388_mode: open
matrix_authentication_service:
  enabled: true
  endpoint: "http://127.0.0.1:$closed_port/"
  secret_path: "$work/synapse/mas_secret"
password_config:
  enabled: false
report_stats: false
enable_metrics: false
trusted_key_servers: []
url_preview_enabled: false
presence:
  enabled: false
YAML

log "starting Synapse on 127.0.0.1:$syn_port"
(cd "$work/synapse" && exec "$work/venv/bin/python" -m synapse.app.homeserver \
  -c homeserver.yaml -c overrides.yaml >"$work/synapse/stdout.log" 2>&1) &
synapse_pid=$!
wait_http "http://127.0.0.1:$syn_port/_matrix/client/versions" "$synapse_pid" "$work/synapse/stdout.log"

log "starting mxqr serve (release, in-memory store, no rate limits)"
MXQR_RATE_LIMIT__ENABLED=false MXQR_HTTP__MAX_CONNECTIONS_PER_ADDRESS=0 MXQR_LOG=warn "$mxqr_bin" serve --listen 127.0.0.1:0 \
  --data-dir "$work/mxqr" >"$work/mxqr.out" 2>"$work/mxqr.err" &
mxqr_pid=$!
for _ in $(seq 1 120); do
  grep -q '^listening on ' "$work/mxqr.out" 2>/dev/null && break
  kill -0 "$mxqr_pid" 2>/dev/null || { cat "$work/mxqr.err" >&2; exit 1; }
  sleep 0.25
done
mxqr_addr=$(sed -n 's/^listening on //p' "$work/mxqr.out")
[[ -n $mxqr_addr ]] || { echo "error: mxqr did not start" >&2; exit 1; }

# run NAME URL PID TRANSPORT CONCURRENCY [PREFIX] -> "flows_per_s p99_ms errors"
run() {
  local out prefix=()
  [[ -n ${6:-} ]] && prefix=(--prefix "$6")
  local flows=$(($5 * 100))
  out=$("$bench_bin" rendezvous --url "$2" --transport "$4" "${prefix[@]}" --concurrency "$5" \
    --flows "$flows" --max-seconds "$SECONDS_PER_RUN" --server-pid "$3")
  echo "$out" >"$work/$1-$4-$5.txt"
  local fps p99 errors
  fps=$(awk '$1 == "flows_per_s" {print $2}' <<<"$out")
  p99=$(awk '$1 == "latency_p99_ms" {print $2}' <<<"$out")
  errors=$(awk '$1 ~ /^errors/ {printf "%s%s", sep, ($2 == "none" ? "none" : $1 "=" $2); sep=","}' <<<"$out")
  echo "$fps $p99 $errors"
}

peak_rss_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

rows=()
for transport in msc4388 msc4108; do
  syn_prefix=
  [[ $transport == msc4388 ]] && syn_prefix=$MSC4388_UNSTABLE
  for c in 1 8 64; do
    log "$transport, concurrency $c: mxqr"
    read -r m_fps m_p99 m_err < <(run mxqr "http://$mxqr_addr" "$mxqr_pid" "$transport" "$c")
    log "$transport, concurrency $c: synapse"
    read -r s_fps s_p99 s_err < <(run synapse "http://127.0.0.1:$syn_port" "$synapse_pid" \
      "$transport" "$c" "$syn_prefix")
    rows+=("$transport $c $m_fps $s_fps $m_p99 $s_p99 $m_err $s_err")
  done
done

echo
echo "Rendezvous flows (create, 7 messages written and read, delete: 16 requests), ${SECONDS_PER_RUN}s or 100 flows per task"
printf '%-8s %4s | %10s %10s %7s | %8s %8s %7s | %s\n' transport conc "mxqr f/s" "syn f/s" ratio \
  "mxqr p99" "syn p99" ratio "errors mxqr/synapse"
for row in "${rows[@]}"; do
  read -r t c mf sf mp sp me se <<<"$row"
  printf '%-8s %4s | %10s %10s %6.1fx | %8s %8s %6.1fx | %s/%s\n' "$t" "$c" "$mf" "$sf" \
    "$(awk -v a="$mf" -v b="$sf" 'BEGIN {print (b > 0 ? a / b : 0)}')" "$mp" "$sp" \
    "$(awk -v a="$sp" -v b="$mp" 'BEGIN {print (b > 0 ? a / b : 0)}')" "$me" "$se"
done
echo "(flows/s ratio = mxqr / Synapse; p99 ratio = Synapse / mxqr; p99 in ms)"
echo "peak RSS: mxqr $(peak_rss_mib "$mxqr_pid") MiB, Synapse $(peak_rss_mib "$synapse_pid") MiB"
