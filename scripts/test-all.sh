#!/usr/bin/env bash
# Runs every test of mxqr on a fresh machine: installs what the tests need, builds the
# workspace once, runs the test suites, then fuzzes every parser for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${MXQR_FUZZ_SECONDS:-30}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "building the workspace (tests included)"
cargo build --workspace --all-targets --locked

step "running the test suites"
cargo test --workspace --locked --no-fail-fast

step "fuzzing every parser for ${FUZZ_SECONDS}s each"
bash scripts/fuzz.sh "$FUZZ_SECONDS"

echo
echo "all tests passed"
