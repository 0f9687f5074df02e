#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for tests and benchmarks.
#
#   scripts/pg-test-server.sh start DIR [--watch PID]   initdb + start, create database
#                                                        `mxqr_test`, print its URL (last line)
#   scripts/pg-test-server.sh stop DIR                   stop the server, remove DIR
#
# The server listens on a free 127.0.0.1 port with trust authentication (loopback only, data
# thrown away) and fsync off. Run as root, it runs as the `postgres` user (initdb refuses root).
# With --watch PID a detached watcher stops the server and removes DIR once PID has exited, so a
# test binary that started it leaves nothing behind even when it is killed.
set -euo pipefail

usage() { echo "usage: $0 start DIR [--watch PID] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
shift 2

# initdb and pg_ctl: PATH first, else Debian's versioned directory (newest version).
find_bin() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local candidate
  candidate=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n $candidate ]]; then echo "$candidate"; return; fi
  echo "error: $1 not found; run scripts/install-test-deps.sh (installs postgresql)" >&2
  exit 1
}

# Runs a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local initdb pg_ctl psql port
  initdb=$(find_bin initdb)
  pg_ctl=$(find_bin pg_ctl)
  psql=$(find_bin psql)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "error: running as root needs a postgres user" >&2; exit 1; }
    chown postgres: "$dir"
  fi
  as_owner "$initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  # Random start so that parallel callers rarely race for the same port; retried on failure.
  # Below the ephemeral range (32768+), where a load generator's own connections may hold it.
  for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 12000))
    port_is_free "$port" || continue
    if as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o \
      "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir' \
       -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
      >/dev/null 2>&1; then
      echo "$port" >"$dir/port"
      break
    fi
    port=
  done
  if [[ -z ${port:-} ]]; then
    echo "error: PostgreSQL did not start; log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
  fi
  as_owner "$psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE mxqr_test" >/dev/null
  if [[ -n ${watch_pid:-} ]]; then
    # Detached from our stdout so whoever reads the URL is not kept waiting for EOF.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
      watcher "$watch_pid" "$0" "$dir" </dev/null >/dev/null 2>&1 &
  fi
  echo "postgres://postgres@127.0.0.1:$port/mxqr_test"
}

stop() {
  [[ -d $dir ]] || return 0
  if [[ -f $dir/data/postmaster.pid ]]; then
    as_owner "$(find_bin pg_ctl)" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case $cmd in
  start)
    watch_pid=
    if [[ ${1:-} == --watch ]]; then
      [[ $# -eq 2 ]] || usage
      watch_pid=$2
    elif [[ $# -ne 0 ]]; then
      usage
    fi
    start
    ;;
  stop) stop ;;
  *) usage ;;
esac
