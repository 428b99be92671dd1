#!/usr/bin/env bash
# Installs the peer servers and the reference harnesses, each in its own venv under the
# git-ignored bench/out/venvs/ (nothing goes into the test venv .venv):
#
#   bench/peers/install.sh                  # all of them
#   bench/peers/install.sh fastapi grpc     # some of them
#
#   fastapi   FastAPI + uvicorn + onnxruntime (the hand-made v2 HTTP baseline)
#   grpc      grpcio + onnxruntime (a hand-made v2 gRPC server; the service stubs come
#             from tritonclient's generated grpc_service_pb2_grpc)
#   triton    nvidia-pytriton 0.7.0, whose wheel holds a real Triton 2.51 server; needs
#             Debian's /usr/bin/python3.11 (its Python backend stub links libpython3.11)
#   mlserver  Seldon MLServer with a small onnxruntime runtime (uvloop<0.22, see FIELD-NOTES)
#   loadgen   MLCommons LoadGen (mlcommons-loadgen) for bench/loadgen_sut.py
#   perf      perf_analyzer: the newest real binary that runs on Debian 12 is in
#             tritonclient[all]==2.51.0 (the current wheel ships a placeholder); it needs
#             Debian's libb64-0d and the CUDA runtime library from nvidia-cuda-runtime-cu12
#             (no GPU is used)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENVS=bench/out/venvs
mkdir -p "$VENVS"
PY=${PYTHON:-python3.11}
ORT=onnxruntime==1.32.0
NUMPY='numpy<2.5'

mkvenv() { # name python
  [ -x "$VENVS/$1/bin/python" ] || "$2" -m venv "$VENVS/$1"
  "$VENVS/$1/bin/python" -m pip install --quiet --upgrade pip
}
pipi() { local v=$1; shift; "$VENVS/$v/bin/python" -m pip install --quiet "$@"; }

install_one() {
  echo "==> $1"
  case $1 in
    fastapi) mkvenv fastapi "$PY"; pipi fastapi fastapi uvicorn "$ORT" "$NUMPY" ;;
    grpc) mkvenv grpc "$PY"; pipi grpc 'tritonclient[grpc]==2.73.0' grpcio "$ORT" "$NUMPY" ;;
    triton) mkvenv triton /usr/bin/python3.11; pipi triton nvidia-pytriton==0.7.0 "$ORT" "$NUMPY" ;;
    mlserver) mkvenv mlserver "$PY"; pipi mlserver mlserver 'uvloop<0.22' "$ORT" "$NUMPY" ;;
    loadgen) mkvenv loadgen "$PY"; pipi loadgen mlcommons-loadgen requests "$NUMPY" ;;
    perf)
      if ! dpkg -s libb64-0d >/dev/null 2>&1; then
        apt-get install -y -q libb64-0d >/dev/null
      fi
      mkvenv perf "$PY"; pipi perf 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12 ;;
    *) echo "unknown peer $1" >&2; return 2 ;;
  esac
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fastapi grpc triton mlserver loadgen perf)
status=0
for t in "${targets[@]}"; do
  if ! install_one "$t"; then echo "!! $t failed to install" >&2; status=1; fi
done
exit $status
