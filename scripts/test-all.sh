#!/usr/bin/env bash
# Runs every test of mxqr on a fresh machine: installs what the tests need, builds the
# workspace once, runs the test suites, then fuzzes every parser for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

# 14 targets: 20 s each keeps the fuzzing step near five minutes.
FUZZ_SECONDS="${MXQR_FUZZ_SECONDS:-20}"
# A one-off build gains nothing from incremental caches, which only cost disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version
df -h . | tail -n 1

step "installing test dependencies"
bash scripts/install-test-deps.sh

# Clippy is the compiler of the workspace's own crates (what `cargo clippy` does, but with code
# generation), so one build both lints every target and produces the test binaries; a separate
# `cargo clippy` would compile everything a second time. Warnings are errors.
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
if [ ! -x "$CLIPPY_DRIVER" ]; then
  echo "error: clippy-driver not found (rustup component add clippy)" >&2
  exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

step "building the workspace and its tests once, linted by clippy (the test profile is what cargo test uses)"
cargo test --workspace --locked --no-run

step "starting a throw-away PostgreSQL for the pg_* tests"
PG_DIR=$(mktemp -d /tmp/mxqr-pg.XXXXXX)
trap 'bash scripts/pg-test-server.sh stop "$PG_DIR"' EXIT
MXQR_TEST_PG_URL=$(bash scripts/pg-test-server.sh start "$PG_DIR" | tail -n 1)
export MXQR_TEST_PG_URL
echo "$MXQR_TEST_PG_URL"

step "running the test suites"
cargo test --workspace --locked --no-fail-fast
bash scripts/pg-test-server.sh stop "$PG_DIR"

step "load: 10,000 concurrent sign-in flows, one instance and two on PostgreSQL, zero errors"
LOAD_PROFILE=dev bash bench/load-10k.sh

# In CI the clone is thrown away after this run: drop the test build (tens of GB with
# matrix-sdk) before the sanitizer build of the fuzz targets needs the disk.
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  step "freeing the test build's disk before fuzzing (CI only)"
  rm -rf target/debug
fi
df -h . | tail -n 1

step "fuzzing every parser for ${FUZZ_SECONDS}s each"
# The fuzz workspace has its own build (sanitizers); clippy has linted the code it fuzzes.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash scripts/fuzz.sh "$FUZZ_SECONDS"

echo
echo "all tests passed"
