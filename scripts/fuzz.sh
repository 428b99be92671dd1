#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (one per decoder of untrusted input; see
# docs/security.md), each for SECONDS, and prints executions and exec/s per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # CI: scripts/fuzz.sh 60
#   scripts/fuzz.sh 3600 grpc_infer            # a long run of one target
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each target
# starts from its seed corpus (fuzz/corpus/<target>, read-only here) and writes what it
# finds to fuzz/work/<target> (ignored by git). Memory is capped: one allocation over
# FUZZ_MALLOC_MB or a process over FUZZ_RSS_MB is a failure, which is how the memory
# amplification attacks of issue 21 show up. A crash leaves its input in
# fuzz/artifacts/<target>/: fix it, then copy the input to fuzz/corpus/<target>/ under a
# name saying what it is (the corpus test in `cargo test` then runs it for good).
#
# Environment: FUZZ_SANITIZER (none; `address` for ASan over the dependencies' unsafe
# code), FUZZ_RSS_MB (2048), FUZZ_MALLOC_MB (256), FUZZ_CODEGEN_UNITS (16: a faster
# build of the whole dependency tree).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
build=(--fuzz-dir fuzz --sanitizer "$sanitizer" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")

cargo +nightly fuzz build "${build[@]}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

status=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/work/$target.log"
  echo "== $target: ${seconds}s"
  if cargo +nightly fuzz run "${build[@]}" "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -malloc_limit_mb="${FUZZ_MALLOC_MB:-256}" \
    -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -n 40 "$log"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
  summary+=("$(printf '%-16s %-6s %12s runs %8s exec/s' "$target" "$result" "$runs" "$rate")")
done
printf '%s\n' "${summary[@]}"
exit "$status"
