#!/usr/bin/env bash
# Installs what the test suites need and a fresh machine lacks. Idempotent.
set -euo pipefail

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked --quiet
fi
