#!/usr/bin/env python3
"""Generate Sluice's example model repository (Triton layout) and broken test models.

Everything is deterministic from SEED and needs no downloads: the digits model is
trained on scikit-learn's bundled `load_digits()` data; every other model is built
by hand with `onnx.helper` and random weights from `numpy.random.default_rng`.
Running the script twice yields byte-identical files.

Usage (from the repository root):

    .venv/bin/python scripts/make_models.py [--out DIR] [--data-out DIR] [--broken-out DIR]

Outputs (defaults, relative to the repository root):

    examples/models/          the example model repository
    examples/data/            digits held-out split + expected sklearn accuracy
    tests/data/broken_models/ deliberately broken models for error-path tests
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240617
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
PRODUCER = "sluice-examples"

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


def rng_for(name: str) -> np.random.Generator:
    """Independent, stable RNG stream per model (adding a model never changes another)."""
    tag = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return np.random.default_rng([SEED, tag])


def normal_weights(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """Weights ~ N(0, 1/sqrt(fan_in)) as float32."""
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def finish_model(graph: onnx.GraphProto, opsets=None) -> onnx.ModelProto:
    opsets = opsets or [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER)
    return stamp(model)


def stamp(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER
    model.producer_version = ""
    model.doc_string = PRODUCER
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_model(model: onnx.ModelProto, path: Path) -> None:
    write_bytes(path, model.SerializeToString())


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez, but with fixed zip timestamps so the file is byte-stable."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, val in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(val), allow_pickle=False)
            zf.writestr(info, payload.getvalue())
    write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- models


def make_digits(out: Path, data_out: Path) -> dict:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )

    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    sk_acc = float(model.score(x_test, y_test))

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    native_ir = onx.ir_version
    native_producer = (onx.producer_name, onx.producer_version)
    native_graph_name = onx.graph.name
    # skl2onnx names the graph with a random uuid4, the only nondeterministic byte
    # in its output; pin it so re-runs are byte-identical.
    onx.graph.name = "digits"
    onx = stamp(onx)
    save_model(onx, out / "digits" / "1" / "model.onnx")

    config = {
        "name": "digits",
        "backend": "tract",
        "max_batch_size": 64,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [
            {"name": "label", "data_type": "TYPE_INT64", "dims": []},
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
        ],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    write_text(out / "digits" / "config.json", json.dumps(config, indent=2) + "\n")

    save_npz_deterministic(
        data_out / "digits_test.npz",
        x=x_test.astype(np.float32),
        y=y_test.astype(np.int64),
    )
    write_text(
        data_out / "digits_expected.json",
        json.dumps({"accuracy": sk_acc, "n": int(len(y_test))}, indent=2) + "\n",
    )
    return {
        "sk_acc": sk_acc,
        "n_test": int(len(y_test)),
        "n_iter": int(model.n_iter_),
        "converged": converged,
        "native_ir": native_ir,
        "native_producer": native_producer,
        "native_graph_name": native_graph_name,
        "x_test": x_test,
        "y_test": y_test,
    }


MLP_PBTXT = """\
# Random-weight MLP 784-256-10 with a dynamic batch dimension.
name: "mlp"
backend: "tract"
max_batch_size: 32
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 784 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { latest: { num_versions: 1 } }
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def make_mlp(out: Path) -> None:
    rng = rng_for("mlp")
    w1 = normal_weights(rng, (784, 256), 784)
    b1 = normal_weights(rng, (256,), 784)
    w2 = normal_weights(rng, (256, 10), 256)
    b2 = normal_weights(rng, (10,), 256)
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1.mm"], name="fc1_matmul"),
        helper.make_node("Add", ["fc1.mm", "fc1.bias"], ["fc1.out"], name="fc1_add"),
        helper.make_node("Relu", ["fc1.out"], ["relu1.out"], name="relu1"),
        helper.make_node("MatMul", ["relu1.out", "fc2.weight"], ["fc2.mm"], name="fc2_matmul"),
        helper.make_node("Add", ["fc2.mm", "fc2.bias"], ["logits"], name="fc2_add"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])
        ],
        initializer=[
            numpy_helper.from_array(w1, "fc1.weight"),
            numpy_helper.from_array(b1, "fc1.bias"),
            numpy_helper.from_array(w2, "fc2.weight"),
            numpy_helper.from_array(b2, "fc2.bias"),
        ],
    )
    save_model(finish_model(graph), out / "mlp" / "1" / "model.onnx")
    write_text(out / "mlp" / "config.pbtxt", MLP_PBTXT)


def make_cnn(out: Path) -> None:
    rng = rng_for("cnn")
    c1w = normal_weights(rng, (8, 3, 3, 3), 3 * 3 * 3)
    c1b = normal_weights(rng, (8,), 3 * 3 * 3)
    c2w = normal_weights(rng, (16, 8, 3, 3), 8 * 3 * 3)
    c2b = normal_weights(rng, (16,), 8 * 3 * 3)
    fcw = normal_weights(rng, (16, 10), 16)
    fcb = normal_weights(rng, (10,), 16)
    nodes = [
        helper.make_node(
            "Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1.out"],
            name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ),
        helper.make_node("Relu", ["conv1.out"], ["relu1.out"], name="relu1"),
        helper.make_node(
            "MaxPool", ["relu1.out"], ["pool1.out"],
            name="pool1", kernel_shape=[2, 2], strides=[2, 2],
        ),
        helper.make_node(
            "Conv", ["pool1.out", "conv2.weight", "conv2.bias"], ["conv2.out"],
            name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ),
        helper.make_node("Relu", ["conv2.out"], ["relu2.out"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2.out"], ["gap.out"], name="gap"),
        helper.make_node("Flatten", ["gap.out"], ["flat.out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat.out", "fc.weight", "fc.bias"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(c1w, "conv1.weight"),
            numpy_helper.from_array(c1b, "conv1.bias"),
            numpy_helper.from_array(c2w, "conv2.weight"),
            numpy_helper.from_array(c2b, "conv2.bias"),
            numpy_helper.from_array(fcw, "fc.weight"),
            numpy_helper.from_array(fcb, "fc.bias"),
        ],
    )
    save_model(finish_model(graph), out / "cnn" / "1" / "model.onnx")


MIXED_PBTXT = """\
# Several inputs/outputs and datatypes, no batching (max_batch_size: 0).
name: "mixed"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "a"
    data_type: TYPE_INT32
    dims: [ 4 ]
  },
  {
    name: "b"
    data_type: TYPE_FP64
    dims: [ 4 ]
  },
  {
    name: "h"
    data_type: TYPE_FP16
    dims: [ 4 ]
  }
]
output [
  {
    name: "sum"
    data_type: TYPE_FP64
    dims: [ 4 ]
  },
  {
    name: "h2"
    data_type: TYPE_FP16
    dims: [ 4 ]
  },
  {
    name: "positive"
    data_type: TYPE_BOOL
    dims: [ 4 ]
  }
]
"""


def make_mixed(out: Path) -> None:
    nodes = [
        helper.make_node("Cast", ["a"], ["a_f64"], name="cast_a", to=TensorProto.DOUBLE),
        helper.make_node("Add", ["a_f64", "b"], ["sum"], name="add"),
        helper.make_node("Mul", ["h", "h"], ["h2"], name="square"),
        helper.make_node("Greater", ["b", "zero"], ["positive"], name="greater"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        inputs=[
            helper.make_tensor_value_info("a", TensorProto.INT32, [4]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, [4]),
        ],
        outputs=[
            helper.make_tensor_value_info("sum", TensorProto.DOUBLE, [4]),
            helper.make_tensor_value_info("h2", TensorProto.FLOAT16, [4]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, [4]),
        ],
        initializer=[numpy_helper.from_array(np.array(0.0, dtype=np.float64), "zero")],
    )
    save_model(finish_model(graph), out / "mixed" / "1" / "model.onnx")
    write_text(out / "mixed" / "config.pbtxt", MIXED_PBTXT)


# --------------------------------------------------------------------------- broken repo


def identity_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")],
        "identity",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return finish_model(graph)


def simple_pbtxt(name: str, input_name: str = "x") -> str:
    return f"""\
name: "{name}"
max_batch_size: 0
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }}
]
output [
  {{
    name: "y"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }}
]
"""


BADCONFIG_PBTXT = """\
# Deliberate syntax error: the input list is never closed.
name: "badconfig"
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
"""


def make_broken(broken_out: Path) -> None:
    ident = identity_model().SerializeToString()

    # corrupt: 200 bytes that are not a valid ONNX protobuf. The leading 'N' (0x4E)
    # decodes as field 9 with wire type 6, which is invalid, so any protobuf parser
    # rejects the file at its first byte; the rest is seeded random garbage.
    head = b"NOT AN ONNX MODEL\x00"
    tail = rng_for("corrupt").integers(0, 256, size=200 - len(head), dtype=np.uint8).tobytes()
    write_bytes(broken_out / "corrupt" / "1" / "model.onnx", head + tail)
    write_text(broken_out / "corrupt" / "config.pbtxt", simple_pbtxt("corrupt"))

    write_bytes(broken_out / "badconfig" / "1" / "model.onnx", ident)
    write_text(broken_out / "badconfig" / "config.pbtxt", BADCONFIG_PBTXT)

    write_bytes(broken_out / "good" / "1" / "model.onnx", ident)
    write_text(broken_out / "good" / "config.pbtxt", simple_pbtxt("good"))

    write_bytes(broken_out / "mismatch" / "1" / "model.onnx", ident)
    write_text(
        broken_out / "mismatch" / "config.pbtxt",
        "# Names an input 'nope' that the ONNX file does not have (it has 'x').\n"
        + simple_pbtxt("mismatch", input_name="nope"),
    )


# --------------------------------------------------------------------------- README


def readme(acc: float, n: int, onnx_acc: float, digits_opsets: str) -> str:
    return f"""\
# Example model repository

A small model repository in NVIDIA Triton's layout
(`<model>/config.{{pbtxt,json}}` + `<model>/<version>/model.onnx`) for Sluice's
examples, tests and benchmarks. Every file here is generated by
`scripts/make_models.py`, deterministically (fixed seed, byte-identical on re-runs)
and without downloads. All ONNX files use IR version {IR_VERSION}. The hand-built
models import opset {OPSET}. The digits model is exported with
`target_opset={{"": {OPSET}, "ai.onnx.ml": {ML_OPSET}}}`, but skl2onnx treats that as a ceiling
and writes the lowest opsets its operators need: ai.onnx {digits_opsets}.

Regenerate from the repository root with:

    .venv/bin/python scripts/make_models.py

(`--out DIR` writes the repository elsewhere; `--data-out DIR` and `--broken-out DIR`
move the digits test data and the broken-model repository.)

| model | config path exercised | inputs | outputs | batching |
|-------|-----------------------|--------|---------|----------|
| `digits` | `config.json` (Triton config schema in JSON) | `input` FP32 [-1, 64] | `label` INT64 [-1], `probabilities` FP32 [-1, 10] | `max_batch_size: 64` |
| `mlp` | `config.pbtxt` (protobuf text, comments, dynamic batching, version policy, parameters) | `input` FP32 [batch, 784] | `probabilities` FP32 [batch, 10] | `max_batch_size: 32`, 2 instances |
| `cnn` | no config file: auto-completed from the ONNX file | `image` FP32 [N, 3, 32, 32] | `logits` FP32 [N, 10] | dynamic first dim `N` |
| `mixed` | `config.pbtxt` with `platform: "onnxruntime_onnx"` | `a` INT32 [4], `b` FP64 [4], `h` FP16 [4] | `sum` FP64 [4], `h2` FP16 [4], `positive` BOOL [4] | none (`max_batch_size: 0`) |

Each model has exactly one version, `1`.

## digits

scikit-learn `MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)`
trained on `sklearn.datasets.load_digits()` (8x8 images, 64 features), split with
`train_test_split(test_size=0.25, random_state=0, stratify=y)`. Features are scaled to
[0, 1] by dividing by 16 *before* the model, so the ONNX input `input` takes
already-scaled float features. Exported with skl2onnx (`zipmap: False`):
`label` is the predicted digit (int64), `probabilities` the class probabilities.

Held-out accuracy: **{acc:.4f}** on {n} samples (sklearn `model.score`); onnxruntime
on the exported model gives {onnx_acc:.4f}. The held-out split is in
`examples/data/digits_test.npz` (`x` float32 [{n}, 64], already scaled; `y` int64 [{n}])
and the expected accuracy in `examples/data/digits_expected.json`.

## mlp

Random-weight MLP (weights ~ N(0, 1/sqrt(fan_in))): `MatMul(784x256) + Add + Relu`,
`MatMul(256x10) + Add`, `Softmax(axis=-1)`. The batch dimension is symbolic (`batch`).
Its `config.pbtxt` starts with a comment and uses `instance_group`, `version_policy`,
`dynamic_batching` and `parameters`, to exercise the protobuf-text parser.

## cnn

Random-weight CNN: `Conv(3->8, 3x3, pad 1) + Relu + MaxPool(2x2, stride 2)`,
`Conv(8->16, 3x3, pad 1) + Relu`, `GlobalAveragePool`, `Flatten`, `Gemm(16->10)`.
There is deliberately no config file: the server must derive name, inputs, outputs
and batching from the ONNX graph.

## mixed

No weights: `sum = Cast(a, double) + b`, `h2 = h * h` (in FP16),
`positive = Greater(b, 0)`. Exercises non-FP32 datatypes (INT32, FP64, FP16, BOOL),
several inputs and outputs, non-batched shapes and the `platform` field.

## Broken models (tests/data/broken_models)

The same script writes a separate repository of deliberately broken models for
error-path tests: `corrupt` (200 bytes of garbage instead of ONNX, valid config),
`badconfig` (valid Identity model, `config.pbtxt` with a syntax error),
`mismatch` (config names an input `nope` the model lacks) and `good` (a valid
Identity model, `x` FP32 [4] -> `y` FP32 [4], correct config).
"""


# --------------------------------------------------------------------------- verify


def verify(out: Path, data_out: Path, broken_out: Path, digits: dict) -> float:
    import onnxruntime as ort

    rng = np.random.default_rng(0)

    def session(path: Path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def describe(path: Path):
        m = onnx.load(str(path))
        ops = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in m.opset_import)
        return f"ir_version={m.ir_version} opsets[{ops}]"

    def fmt_io(args):
        return ", ".join(f"{a.name}:{a.type}{list(a.shape)}" for a in args)

    # digits: accuracy through onnxruntime must equal sklearn's.
    p = out / "digits" / "1" / "model.onnx"
    sess = session(p)
    with np.load(data_out / "digits_test.npz") as npz:
        x_test, y_test = npz["x"], npz["y"]
    assert x_test.dtype == np.float32 and y_test.dtype == np.int64
    label, proba = sess.run(None, {"input": x_test})
    onnx_acc = float(np.mean(label == y_test))
    print(f"digits: {describe(p)}")
    print(f"  inputs : {fmt_io(sess.get_inputs())}")
    print(f"  outputs: {fmt_io(sess.get_outputs())}")
    print(f"  run -> label {label.dtype}{list(label.shape)}, probabilities {proba.dtype}{list(proba.shape)}")
    print(f"  held-out accuracy: sklearn={digits['sk_acc']:.6f} onnxruntime={onnx_acc:.6f} (n={len(y_test)})")
    assert onnx_acc == digits["sk_acc"], "ONNX accuracy differs from sklearn accuracy"

    feeds = {
        "mlp": lambda: {"input": rng.standard_normal((5, 784)).astype(np.float32)},
        "cnn": lambda: {"image": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)},
        "mixed": lambda: {
            "a": np.array([1, -2, 3, 40], dtype=np.int32),
            "b": np.array([0.5, 1.5, -4.0, 0.0], dtype=np.float64),
            "h": np.array([1.5, -2.0, 0.25, 3.0], dtype=np.float16),
        },
    }
    for name, feed_fn in feeds.items():
        p = out / name / "1" / "model.onnx"
        sess = session(p)
        feed = feed_fn()
        res = sess.run(None, feed)
        shapes = ", ".join(
            f"{o.name}={r.dtype}{list(r.shape)}" for o, r in zip(sess.get_outputs(), res)
        )
        print(f"{name}: {describe(p)}")
        print(f"  inputs : {fmt_io(sess.get_inputs())}")
        print(f"  outputs: {fmt_io(sess.get_outputs())}")
        print(f"  run -> {shapes}")
        if name == "mlp":
            assert res[0].shape == (5, 10) and np.allclose(res[0].sum(-1), 1.0, atol=1e-5)
        if name == "cnn":
            assert res[0].shape == (3, 10)
        if name == "mixed":
            s, h2, pos = res
            assert np.array_equal(s, feed["a"].astype(np.float64) + feed["b"])
            assert np.array_equal(h2, feed["h"] * feed["h"])
            assert np.array_equal(pos, feed["b"] > 0)
            print(f"  values -> sum={s.tolist()} h2={h2.tolist()} positive={pos.tolist()}")

    # broken repository
    for name in ("good", "badconfig", "mismatch"):
        sess = session(broken_out / name / "1" / "model.onnx")
        (y,) = sess.run(None, {"x": np.arange(4, dtype=np.float32)})
        assert np.array_equal(y, np.arange(4, dtype=np.float32))
    corrupt = broken_out / "corrupt" / "1" / "model.onnx"
    try:
        onnx.load(str(corrupt))
    except Exception as exc:  # noqa: BLE001 - any parse error is the point
        onnx_err = type(exc).__name__
    else:
        raise AssertionError("corrupt/1/model.onnx parsed as ONNX")
    try:
        session(corrupt)
    except Exception as exc:  # noqa: BLE001
        ort_err = type(exc).__name__
    else:
        raise AssertionError("onnxruntime loaded corrupt/1/model.onnx")
    print(
        f"broken: good/badconfig/mismatch Identity models run; corrupt rejected "
        f"(onnx: {onnx_err}, onnxruntime: {ort_err})"
    )
    return onnx_acc


def list_tree(root: Path) -> int:
    total = 0
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        total += size
        print(f"  {size:>9}  {f.relative_to(root)}")
    return total


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "models",
                    help="model repository to write (default: examples/models)")
    ap.add_argument("--data-out", type=Path, default=REPO_ROOT / "examples" / "data",
                    help="where digits_test.npz / digits_expected.json go (default: examples/data)")
    ap.add_argument("--broken-out", type=Path, default=REPO_ROOT / "tests" / "data" / "broken_models",
                    help="broken-model repository to write (default: tests/data/broken_models)")
    args = ap.parse_args()
    out, data_out, broken_out = args.out, args.data_out, args.broken_out

    digits = make_digits(out, data_out)
    make_mlp(out)
    make_cnn(out)
    make_mixed(out)
    make_broken(broken_out)

    onnx_acc = verify(out, data_out, broken_out, digits)
    dm = onnx.load(str(out / "digits" / "1" / "model.onnx"))
    ops = {o.domain or "ai.onnx": o.version for o in dm.opset_import}
    digits_opsets = f"{ops.get('ai.onnx')}, ai.onnx.ml {ops.get('ai.onnx.ml')}"
    write_text(
        out / "README.md",
        readme(digits["sk_acc"], digits["n_test"], onnx_acc, digits_opsets),
    )

    print()
    print(
        f"digits: MLPClassifier n_iter={digits['n_iter']} converged={digits['converged']} "
        f"(skl2onnx wrote ir_version={digits['native_ir']}, producer={digits['native_producer']}, "
        f"graph name {digits['native_graph_name']!r}; "
        f"restamped to ir_version={IR_VERSION}, producer={PRODUCER!r}, graph name 'digits')"
    )
    print(f"digits held-out accuracy: {digits['sk_acc']:.4f} ({digits['n_test']} samples)")
    for label, root in (("models", out), ("data", data_out), ("broken", broken_out)):
        print(f"{label}: {root}")
        total = list_tree(root)
        print(f"  total {total} bytes ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
