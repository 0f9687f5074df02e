#!/usr/bin/env bash
# Runs a throw-away Synapse 1.163.2 on loopback that delegates authentication to mxqr
# (`matrix_authentication_service`), for crates/mxqr/tests/all/synapse_delegated.rs and by hand.
#
#   synapse-test-server.sh --install-only
#   synapse-test-server.sh --mxqr-url URL --secret-file FILE [--server-name NAME] [--dir DIR]
#                          [--port PORT] [--msc4108-delegate URL]
#
# Installs Synapse into a venv in ${MXQR_SYNAPSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mxqr/
# synapse-1.163.2} when missing (pip, about 40 s), writes its config into DIR (default: a new
# temporary directory), starts it on PORT (default: a free loopback port; mxqr must be told
# Synapse's URL before it starts, so tests pick one) and, once it answers, prints
#   synapse_url=http://127.0.0.1:PORT
#   synapse_dir=DIR
#   synapse_pid=PID
# then stays in the foreground until SIGTERM/SIGINT or until its parent exits, and stops
# Synapse. Synapse's own rendezvous is on (MSC4108 and MSC4388, open); with
# --msc4108-delegate, Synapse answers MSC4108 session creation with a 307 redirect to URL
# (`msc4108_delegation_endpoint`, e.g. mxqr's MSC4108 endpoint) instead of serving it.
set -euo pipefail

VERSION=1.163.2
VENV=${MXQR_SYNAPSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mxqr/synapse-$VERSION}

install_venv() {
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || { echo "python3 is required to run Synapse" >&2; exit 1; }
  mkdir -p "$(dirname "$VENV")"
  # Build beside the final place, then rename: concurrent installers never see half a venv.
  local tmp
  tmp=$(mktemp -d "$VENV.tmp.XXXXXX")
  echo "installing matrix-synapse==$VERSION into $VENV" >&2
  python3 -m venv "$tmp"
  "$tmp/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$VERSION" >&2
  # Only bin/python is used, which finds its packages relative to itself after the move.
  if [[ -d $VENV ]] || ! mv -T "$tmp" "$VENV" 2>/dev/null; then
    rm -rf "$tmp"
  fi
  "$VENV/bin/python" -c 'import synapse' || { echo "Synapse venv at $VENV is broken" >&2; exit 1; }
}

MXQR_URL= SECRET_FILE= SERVER_NAME=mxqr.test DIR= PORT= MSC4108_DELEGATE=
while [[ $# -gt 0 ]]; do
  case $1 in
    --install-only) install_venv; exit 0 ;;
    --mxqr-url) MXQR_URL=$2; shift 2 ;;
    --secret-file) SECRET_FILE=$2; shift 2 ;;
    --server-name) SERVER_NAME=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --msc4108-delegate) MSC4108_DELEGATE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n $MXQR_URL && -n $SECRET_FILE ]] || { echo "--mxqr-url and --secret-file are required" >&2; exit 2; }
install_venv
PY=$VENV/bin/python

DIR=${DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mxqr-synapse.XXXXXX")}
mkdir -p "$DIR/media_store"
[[ -n $PORT ]] || PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET_FILE=$(realpath "$SECRET_FILE")

cat >"$DIR/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $DIR/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF

cat >"$DIR/homeserver.yaml" <<EOF
server_name: "$SERVER_NAME"
public_baseurl: "http://127.0.0.1:$PORT/"
listeners:
  - port: $PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "$DIR/homeserver.db"
log_config: "$DIR/log.yaml"
media_store_path: "$DIR/media_store"
signing_key_path: "$DIR/signing.key"
macaroon_secret_key: "$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
form_secret: "$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
presence:
  enabled: false
url_preview_enabled: false
enable_registration: false
password_config:
  enabled: false
matrix_authentication_service:
  enabled: true
  endpoint: "$MXQR_URL"
  secret_path: "$SECRET_FILE"
experimental_features:
  msc4388_mode: open
EOF
if [[ -n $MSC4108_DELEGATE ]]; then
  echo "  msc4108_delegation_endpoint: \"$MSC4108_DELEGATE\"" >>"$DIR/homeserver.yaml"
else
  echo "  msc4108_enabled: true" >>"$DIR/homeserver.yaml"
fi

"$PY" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" --generate-keys >/dev/null
"$PY" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" >"$DIR/stdout.log" 2>&1 &
SYNAPSE=$!
PARENT=$PPID
stop() { kill "$SYNAPSE" 2>/dev/null || true; wait "$SYNAPSE" 2>/dev/null || true; }
trap 'stop; exit 0' TERM INT
trap stop EXIT

for _ in $(seq 1 600); do
  if ! kill -0 "$SYNAPSE" 2>/dev/null; then
    echo "Synapse exited during start-up; its log:" >&2
    tail -n 40 "$DIR/stdout.log" "$DIR/homeserver.log" >&2 2>/dev/null || true
    exit 1
  fi
  if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
echo "synapse_url=http://127.0.0.1:$PORT"
echo "synapse_dir=$DIR"
echo "synapse_pid=$SYNAPSE"

# Foreground until told to stop, or until whoever started us is gone.
while kill -0 "$SYNAPSE" 2>/dev/null && kill -0 "$PARENT" 2>/dev/null; do
  sleep 0.5 &
  wait $! || true
done
