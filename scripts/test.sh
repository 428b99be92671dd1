#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (a Python
# venv in .venv), builds once in the release profile, then runs the lints, the Rust
# tests and the Python end-to-end tests against real `sluice serve` processes.
#
#   scripts/test.sh            # everything
#   SKIP_LINT=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating the Python venv (.venv)"
  "$PYTHON" -m venv .venv
fi
step "installing Python test requirements"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

if [ -z "${SKIP_LINT:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

step "cargo build"
cargo build --release --workspace

step "cargo test"
cargo test --release --workspace

step "python end-to-end tests"
SLUICE_BIN="$PWD/target/release/sluice" .venv/bin/python -m pytest -q tests/python

step "all tests passed"
