# syntax=docker/dockerfile:1
# The Sluice container image: `sluice serve` as uid 1000 on Debian slim, with the ONNX
# Runtime library from the same PyPI wheel the tests pin (tests/python/requirements.txt),
# so `--default-backend onnxruntime` (or `backend: "onnxruntime"` in a model config)
# works out of the box; tract needs nothing.
#
#   docker build -t sluice:0.1.0 .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -v "$PWD/examples/models:/models:ro" sluice:0.1.0
#
# Flags go after the image name (`... sluice:0.1.0 --queue-capacity 256`) or in SLUICE_*
# environment variables. No HEALTHCHECK: Kubernetes probes /v2/health/live and
# /v2/health/ready (deploy/). Linted by hadolint in tests/python/test_deploy.py; no
# container engine runs on the project's machines, so the build itself is not tested there.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# One release build of the binary only (protoc comes from the protoc-bin-vendored crate).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

FROM python:3.11-slim-${DEBIAN_RELEASE} AS onnxruntime
ARG ONNXRUNTIME_VERSION=1.32.0
WORKDIR /ort
# Only the shared library is taken from the wheel; Python is not in the final image.
# The wheel for the build's own architecture (x86_64 or aarch64).
RUN pip download --no-cache-dir --no-deps --only-binary=:all: \
        "onnxruntime==${ONNXRUNTIME_VERSION}" -d wheel \
    && python -m zipfile -e wheel/onnxruntime-*.whl unpacked \
    && install -D -m 0644 "unpacked/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" \
        "/out/libonnxruntime.so.${ONNXRUNTIME_VERSION}"

FROM debian:${DEBIAN_RELEASE}-slim
ARG ONNXRUNTIME_VERSION=1.32.0
RUN groupadd --gid 1000 sluice \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sluice \
    && mkdir -p /models
COPY --from=onnxruntime /out/ /opt/onnxruntime/lib/
COPY --from=build /out/sluice /usr/local/bin/sluice
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    SLUICE_MODEL_REPOSITORY=/models \
    SLUICE_HTTP_PORT=8000 \
    SLUICE_GRPC_PORT=8001 \
    SLUICE_METRICS_PORT=8002
USER 1000:1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["/usr/local/bin/sluice", "serve"]
