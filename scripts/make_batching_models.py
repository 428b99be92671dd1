#!/usr/bin/env python3
"""Model repository for the batching benchmark (`cargo bench -p sluice --bench batching`),
written to the git-ignored `models-extra/batching/`:

- `wide_*`: a memory-bound MLP 1024-4096-4096-16 with random weights (84 MB), where
  engine batches pay most; one folder per scheduling variant, sharing one file.
- `cnn_*`: the example small CNN with the same variants.

Variants: `off` (no dynamic batching: one request per run), `d0`, `d1ms`, `d5ms` (Triton's
static `max_queue_delay`), `adaptive` (Sluice's learned hold, asked for with the
`sluice_adaptive_batching` parameter; without it a delay of 0 never waits, as in Triton). All: max_batch_size 32,
one instance.

With `--resnet50`, also `models-extra/batching-resnet50/resnet50_*`: the ResNet-50-shaped
model of `scripts/make_bench_models.py` (made first if missing) with the same variants and
max_batch_size 8 (a batch of 8 already takes about a second on one core with tract).

    .venv/bin/python scripts/make_batching_models.py [--resnet50]
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models-extra" / "batching"

VARIANTS = {
    "off": "",
    "d0": 'dynamic_batching { max_queue_delay_microseconds: 0 }\n'
          'parameters { key: "sluice_adaptive_batching" value: { string_value: "false" } }\n',
    "d1ms": "dynamic_batching { max_queue_delay_microseconds: 1000 }\n",
    "d5ms": "dynamic_batching { max_queue_delay_microseconds: 5000 }\n",
    "adaptive": 'dynamic_batching { }\n'
                'parameters { key: "sluice_adaptive_batching" value: { string_value: "true" } }\n',
}


def wide_mlp(path):
    rng = np.random.default_rng(1)
    dims = [1024, 4096, 4096, 16]
    nodes, inits = [], []
    prev = "input"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = np.zeros(b, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "output" if i == len(dims) - 2 else f"a{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out if i == len(dims) - 2 else f"z{i}"]))
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice-bench")
    model.ir_version = 8
    onnx.save(model, str(path))


def config(name, inp, inp_dims, out, out_dims, variant, max_batch=32):
    return (f'name: "{name}"\nbackend: "tract"\nmax_batch_size: {max_batch}\n'
            f'input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: {inp_dims} }} ]\n'
            f'output [ {{ name: "{out}" data_type: TYPE_FP32 dims: {out_dims} }} ]\n'
            f'instance_group [ {{ count: 1 }} ]\n' + VARIANTS[variant])


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    wide_file = OUT / "wide.onnx"
    wide_mlp(wide_file)
    cnn_file = ROOT / "examples" / "models" / "cnn" / "1" / "model.onnx"
    for variant in VARIANTS:
        for base, src, io in [
            ("wide", wide_file, ("input", "[ 1024 ]", "output", "[ 16 ]")),
            ("cnn", cnn_file, ("image", "[ 3, 32, 32 ]", "logits", "[ 10 ]")),
        ]:
            name = f"{base}_{variant}"
            (OUT / name / "1").mkdir(parents=True)
            os.link(src, OUT / name / "1" / "model.onnx")
            (OUT / name / "config.pbtxt").write_text(config(name, *io, variant))
    wide_file.unlink()
    print(f"wrote {len(VARIANTS) * 2} models to {OUT.relative_to(ROOT)}")
    if "--resnet50" in sys.argv[1:]:
        resnet50()


def resnet50():
    src = ROOT / "models-bench" / "resnet50" / "1" / "model.onnx"
    if not src.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bench_models.py")], check=True)
    out = ROOT / "models-extra" / "batching-resnet50"
    if out.exists():
        shutil.rmtree(out)
    for variant in VARIANTS:
        name = f"resnet50_{variant}"
        (out / name / "1").mkdir(parents=True)
        os.link(src, out / name / "1" / "model.onnx")
        (out / name / "config.pbtxt").write_text(
            config(name, "image", "[ 3, 224, 224 ]", "logits", "[ 1000 ]", variant, max_batch=8))
    print(f"wrote {len(VARIANTS)} models to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
