"""The example models, their inputs, and reference outputs from ONNX Runtime."""

import numpy as np
import onnxruntime as ort

from conftest import EXAMPLES

# name -> list of (input name, numpy dtype, shape without batch, batches?)
MODELS = {
    "digits": {"batch": True, "inputs": [("input", np.float32, [64])], "outputs": ["label", "probabilities"]},
    "mlp": {"batch": True, "inputs": [("input", np.float32, [784])], "outputs": ["probabilities"]},
    "cnn": {"batch": True, "inputs": [("image", np.float32, [3, 32, 32])], "outputs": ["logits"]},
    "mixed": {
        "batch": False,
        "inputs": [("a", np.int32, [4]), ("b", np.float64, [4]), ("h", np.float16, [4])],
        "outputs": ["sum", "h2", "positive"],
    },
}

V2_DTYPE = {
    np.float32: "FP32", np.float64: "FP64", np.float16: "FP16", np.int32: "INT32",
    np.int64: "INT64", np.bool_: "BOOL", np.uint8: "UINT8",
}


def random_inputs(name, rows=2, seed=0):
    """Fresh random inputs for a model: a dict name -> array."""
    rng = np.random.default_rng(seed)
    spec = MODELS[name]
    out = {}
    for iname, dtype, shape in spec["inputs"]:
        full = ([rows] if spec["batch"] else []) + shape
        if np.issubdtype(dtype, np.integer):
            out[iname] = rng.integers(-100, 100, size=full).astype(dtype)
        else:
            out[iname] = rng.standard_normal(full).astype(dtype)
    return out


_SESSIONS = {}


def reference(name, inputs):
    """ONNX Runtime's outputs for the model's version 1: dict name -> array."""
    if name not in _SESSIONS:
        _SESSIONS[name] = ort.InferenceSession(str(EXAMPLES / name / "1" / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
    sess = _SESSIONS[name]
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def assert_close(actual, expected, rtol=1e-4, atol=1e-5, what=""):
    """Relative error under rtol (with a small absolute floor for values near 0)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == np.float16:
        rtol, atol = max(rtol, 1e-3), max(atol, 1e-3)
    if np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
