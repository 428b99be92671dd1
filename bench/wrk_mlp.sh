#!/usr/bin/env bash
# External-client cross-check of the HTTP path: wrk (Debian package `wrk`) sending Triton
# binary-tensor infer requests for the example MLP (batch 1) to a running server.
#   cargo run --release -- serve --model-repository examples/models &
#   bench/wrk_mlp.sh [URL]          # default http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:-http://127.0.0.1:8000}
mkdir -p bench/out
python3 - <<'PY'
import json, struct
x = b"".join(struct.pack("<f", (i % 17) / 17.0) for i in range(784))
header = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                 "parameters": {"binary_data_size": len(x)}}],
                     "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
open("bench/out/mlp_body.bin", "wb").write(header + x)
open("bench/out/mlp_post.lua", "w").write(
    'wrk.method = "POST"\n'
    'local f = io.open("bench/out/mlp_body.bin", "rb"); wrk.body = f:read("*all"); f:close()\n'
    f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"\n')
PY
for c in 1 8; do
  echo "== wrk -c$c"
  wrk -t1 -c"$c" -d4s -s bench/out/mlp_post.lua --latency "$url/v2/models/mlp/infer" | grep -E "Requests/sec|50%|99%"
done
