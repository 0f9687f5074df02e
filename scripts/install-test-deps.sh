#!/usr/bin/env bash
# Installs what the test suites need and a fresh machine lacks. Idempotent.
set -euo pipefail

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked --quiet
fi

# PostgreSQL server binaries for the pg_* tests (scripts/pg-test-server.sh runs its own cluster).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing postgresql from the distribution"
  sudo=
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql
fi

# Synapse 1.163.2 in a cached venv for crates/mxqr/tests/all/synapse_delegated.rs (the script installs it when
# missing, so the test itself does not wait for pip).
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "installing python3-venv from the distribution"
  sudo=
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3 python3-venv
fi
bash "$(dirname "$0")/synapse-test-server.sh" --install-only

# Headless Chromium and chromedriver for the browser page tests (crates/mxqr-server/tests/all/browser_pages.rs).
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  echo "installing chromium and chromium-driver from the distribution"
  sudo=
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
fi
