"""Variant families end to end (issue 15): a family folder (`platform: "sluice_family"`)
served as one v2 model, the variant chosen per request from its latency objective and
accuracy floor under the live state of each variant's queue, bad families refused
while everything else serves, requests larger than a batch split across instances
(HTTP and gRPC, against ONNX Runtime), and `sluice profile`.

No test depends on the machine's speed. Variants' latencies come from the
`profile.json` each variant folder holds (the server seeds its scheduler with it);
the real runs of these tiny models only lower a seeded figure, and each test keeps
the number of runs that could lower it below its threshold small (see SEEDS). A long
queue is made by an execution gate, never by load."""

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from conftest import BIN, Gate, make_gated_model, metric, wait_for_queue, wait_until

WIDTH = 4
# Seeded run latency (ms) per variant. The accurate one at 1 s: a run of the tiny model
# pulls its learned mean down by a fifth of the gap, so it stays above the tight
# objective (100 ms) for its first 10 runs; these tests run it at most 4 times.
SEEDS = {"accurate": 1000.0, "fast": 1.0, "slow_gated": 40.0, "fast2": 1.0, "late_gated": 40.0}
TIGHT_MS, LOOSE_MS = 100, 5000


def save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def affine_model(name, scale, batch=True):
    """y = x * scale + 1 on FP32 [batch, 4] (or [1, 4] without a batch dimension)."""
    shape = ["n", WIDTH] if batch else [1, WIDTH]
    s = helper.make_tensor("s", TensorProto.FLOAT, [WIDTH], np.full(WIDTH, scale, np.float32))
    one = helper.make_tensor("one", TensorProto.FLOAT, [WIDTH], np.ones(WIDTH, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
        name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [s, one])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def variant(repo, name, scale, max_batch=4, extra=""):
    save(affine_model(name, scale), repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "tract"\nmax_batch_size: {max_batch}\n'
        f'input [{{ name: "x" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        f'output [{{ name: "y" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n{extra}')


def seed(repo, name, ms, batches=(1, 2, 4)):
    """A profile.json giving the variant a run latency of `ms` at every batch size."""
    (repo / name / "profile.json").write_text(json.dumps({
        "format": "sluice-profile/1", "model": name, "hardware_class": "test",
        "batches": [{"batch_size": b, "latency_ms": {"p50": ms}} for b in batches]}))


def family(repo, name, variants, **defaults):
    params = "".join(
        f'parameters: {{ key: "variant.{v}" value: {{ string_value: "{spec}" }} }}\n'
        for v, spec in variants.items())
    params += "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in defaults.items())
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "sluice_family"\n{params}')


def body(rows=1, value=1.0, **params):
    b = {"inputs": [{"name": "x", "shape": [rows, WIDTH], "datatype": "FP32",
                     "data": [value] * (rows * WIDTH)}]}
    if params:
        b["parameters"] = params
    return b


def infer(server, model, b, status=200):
    r = requests.post(f"{server.base}/v2/models/{model}/infer", json=b, timeout=60)
    assert r.status_code == status, r.text
    return r.json()


def answered_by(reply):
    p = reply["parameters"]
    assert reply["model_name"] in ("fam", "held", "late"), reply
    return p["sluice_variant"], p["sluice_variant_version"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("variants")
    variant(repo, "accurate", 2.0)
    variant(repo, "fast", 2.0)
    seed(repo, "accurate", SEEDS["accurate"])
    seed(repo, "fast", SEEDS["fast"])
    family(repo, "fam", {"accurate": "accuracy=0.90 cost=4", "fast": "accuracy=0.70 cost=1"},
           latency_objective_ms=TIGHT_MS)
    # Gated variants run alone (no batching): each queued request waits one run.
    gates = repo.parent / (repo.name + "-gates")
    for name in ("slow_gated", "late_gated"):
        make_gated_model(repo, gates, name)
        seed(repo, name, SEEDS[name], batches=(1,))
    fast2 = repo / "fast2"
    (fast2 / "1").mkdir(parents=True)
    (fast2 / "1" / "model.onnx").write_bytes((repo / "slow_gated" / "1" / "model.onnx").read_bytes())
    (fast2 / "config.pbtxt").write_text(
        (repo / "slow_gated" / "config.pbtxt").read_text().replace("slow_gated", "fast2"))
    seed(repo, "fast2", SEEDS["fast2"], batches=(1,))
    family(repo, "held", {"slow_gated": "accuracy=0.9", "fast2": "accuracy=0.7"})
    family(repo, "late", {"late_gated": "accuracy=0.9"})
    # Bad families.
    family(repo, "bad_unknown", {"accurate": "accuracy=0.9", "nope": "accuracy=0.5"})
    family(repo, "bad_mismatch", {"accurate": "accuracy=0.9", "fast2": "accuracy=0.5"})
    family(repo, "bad_noacc", {"fast": "cost=1"})
    family(repo, "bad_param", {"fast": "accuracy=0.5"}, latency_ms=3)
    return repo, gates


@pytest.fixture(scope="module")
def served(repo):
    from conftest import Server
    root, gates = repo
    s = Server(root, "--test-execution-gates", str(gates))
    held = [Gate(gates / "slow_gated"), Gate(gates / "late_gated")]
    yield s
    for g in held:
        g.open_for_good()
        g.close()
    s.stop()


def test_a_family_serves_as_one_v2_model(served):
    meta = requests.get(f"{served.base}/v2/models/fam", timeout=10).json()
    assert meta["platform"] == "sluice_family"
    assert meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("x", "FP32", [-1, WIDTH])]
    assert [o["name"] for o in meta["outputs"]] == ["y"]
    assert requests.get(f"{served.base}/v2/models/fam/ready", timeout=10).status_code == 200
    config = requests.get(f"{served.base}/v2/models/fam/config", timeout=10).json()
    assert config["platform"] == "sluice_family" and config["max_batch_size"] == 4
    index = {(m["name"]): m for m in requests.post(f"{served.base}/v2/repository/index", timeout=10).json()}
    assert index["fam"]["state"] == "READY"


def test_tight_objective_goes_to_the_fast_variant_loose_to_the_accurate(served):
    before = metric(served, "sluice_variant_choices_total", model="fam", variant="fast")
    # The family's default objective (100 ms) rules out the accurate variant (1 s).
    reply = infer(served, "fam", body(rows=2, value=3.0))
    assert answered_by(reply) == ("fast", "1")
    assert reply["model_version"] == "1"
    assert reply["outputs"][0]["data"] == [7.0] * (2 * WIDTH)
    assert answered_by(infer(served, "fam", body(latency_objective_ms=TIGHT_MS)))[0] == "fast"
    # Loose objectives, from the parameter or from the v2 timeout (µs).
    assert answered_by(infer(served, "fam", body(latency_objective_ms=LOOSE_MS)))[0] == "accurate"
    assert answered_by(infer(served, "fam", body(timeout=LOOSE_MS * 1000)))[0] == "accurate"
    # The parameter wins over the timeout.
    assert answered_by(infer(served, "fam", body(timeout=LOOSE_MS * 1000,
                                                 latency_objective_ms=TIGHT_MS)))[0] == "fast"
    after = metric(served, "sluice_variant_choices_total", model="fam", variant="fast")
    assert after - before == 3
    stats = requests.get(f"{served.base}/v2/models/fam/stats", timeout=10).json()["model_stats"]
    assert [s["name"] for s in stats] == ["fam"]
    counts = {c["variant"]: c["count"] for c in stats[0]["variant_choices"]}
    assert counts["fast"] >= 3 and counts["accurate"] >= 2
    assert stats[0]["inference_stats"]["success"]["count"] >= 5


def test_min_accuracy_excludes_variants_below_it(served):
    # The fast variant would be in time but is not accurate enough.
    reply = infer(served, "fam", body(latency_objective_ms=TIGHT_MS, min_accuracy=0.8))
    assert answered_by(reply)[0] == "accurate"
    err = infer(served, "fam", body(min_accuracy=0.95), status=400)
    assert "no variant with accuracy >= 0.95" in err["error"]
    err = infer(served, "fam", body(latency_objective_ms=-3), status=400)
    assert "latency_objective_ms" in err["error"]


def test_grpc_answers_name_the_variant(served):
    c = grpcclient.InferenceServerClient(url=served.grpc_url)
    try:
        x = grpcclient.InferInput("x", [1, WIDTH], "FP32")
        x.set_data_from_numpy(np.ones((1, WIDTH), np.float32))
        result = c.infer("fam", [x], parameters={"latency_objective_ms": TIGHT_MS})
        response = result.get_response()
        assert response.model_name == "fam"
        assert response.parameters["sluice_variant"].string_param == "fast"
        assert response.parameters["sluice_variant_version"].string_param == "1"
        np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, WIDTH), 3.0, np.float32))
    finally:
        c.close()


def test_a_long_queue_moves_tight_requests_to_the_fast_variant(served, repo):
    _, gates = repo
    gate = Gate(gates / "slow_gated")
    one = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0] * WIDTH}],
           "parameters": {"latency_objective_ms": 100}}
    replies = []

    def send():
        replies.append(infer(served, "held", one))

    threads = []
    try:
        # 40 ms per run: the 1st runs (held), the 2nd waits one run (80 ms), the 3rd two
        # (120 ms > 100 ms) is predicted late there and goes to the fast variant. A
        # prediction also counts the rest of the run in progress (its learned 40 ms
        # less the time it has run): held past 40 ms, that rest is zero, so the
        # figures above hold exactly (the sleep only makes sure of a lower bound).
        for queued in range(2):
            t = threading.Thread(target=send)
            t.start()
            threads.append(t)
            wait_for_queue(served, "slow_gated", running=1, queued=queued)
            if queued == 0:
                time.sleep(SEEDS["slow_gated"] / 1e3 + 0.01)
        t = threading.Thread(target=send)
        t.start()
        threads.append(t)
        wait_for_queue(served, "slow_gated", running=1, queued=2)
        assert answered_by(infer(served, "held", one))[0] == "fast2"
    finally:
        gate.open_for_good()
        for t in threads:
            t.join(60)
        gate.close()
    assert sorted(answered_by(r)[0] for r in replies) == ["slow_gated"] * 3


def test_a_queue_past_the_objective_is_rejected_early(served, repo):
    _, gates = repo
    gate = Gate(gates / "late_gated")
    one = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0] * WIDTH}],
           "parameters": {"latency_objective_ms": 50}}
    threads = []
    try:
        # 40 ms per run. A prediction counts the rest of the run in progress (its
        # learned 40 ms less the time it has run): held past 40 ms, that rest is zero,
        # so the 2nd waits no work and the 3rd one run (40 ms, within 50 ms), whatever
        # the machine's speed (the sleep only makes sure of a lower bound).
        for queued in range(3):
            t = threading.Thread(target=lambda: infer(served, "late", one))
            t.start()
            threads.append(t)
            wait_for_queue(served, "late_gated", running=1, queued=queued)
            if queued == 0:
                time.sleep(SEEDS["late_gated"] / 1e3 + 0.01)
        # Two runs of 40 ms ahead: the queue alone outlasts 50 ms, and there is no
        # faster variant.
        err = infer(served, "late", one, status=429)
        assert "rejected early" in err["error"] and "late_gated" in err["error"]
    finally:
        gate.open_for_good()
        for t in threads:
            t.join(60)
        gate.close()


@pytest.mark.parametrize("name, reason", [
    ("bad_unknown", "variant 'nope': no such model in the repository"),
    ("bad_mismatch", "input 'x' of variant 'fast2' is FP32 [1, 4]"),
    ("bad_noacc", "variant 'fast' states no accuracy"),
    ("bad_param", "unknown parameter 'latency_ms'"),
])
def test_bad_families_are_refused_with_the_reason(served, name, reason):
    index = {m["name"]: m for m in requests.post(f"{served.base}/v2/repository/index", timeout=10).json()}
    assert index[name]["state"] == "UNAVAILABLE"
    assert reason in index[name]["reason"], index[name]
    assert requests.get(f"{served.base}/v2/models/{name}/ready", timeout=10).status_code != 200
    err = infer(served, name, body(), status=503)
    assert reason in err["error"]
    # Everything else serves.
    assert answered_by(infer(served, "fam", body()))[0] == "fast"
    assert infer(served, "fast", body())["model_name"] == "fast"


# ---- Requests larger than a batch, split across instances ---------------------------------

SPLIT_MAX = 4


def matmul_model():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((WIDTH, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [WIDTH, 3], w.flatten()),
         helper.make_tensor("b", TensorProto.FLOAT, [3], b)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def gather_model():
    """y = table[i]: an index past the table's 8 rows fails the run."""
    table = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)], "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("table", TensorProto.FLOAT, [8, 2], table.flatten())])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


SPLIT = 'parameters: { key: "sluice_split_requests" value: { string_value: "true" } }\n'


@pytest.fixture(scope="module")
def split_server(tmp_path_factory):
    from conftest import Server
    repo = tmp_path_factory.mktemp("split")
    save(matmul_model(), repo / "split" / "1" / "model.onnx")
    (repo / "split" / "config.pbtxt").write_text(
        f'name: "split"\nbackend: "tract"\nmax_batch_size: {SPLIT_MAX}\n'
        f'input [{{ name: "x" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]\n'
        'instance_group [{ count: 2 }]\n' + SPLIT)
    save(gather_model(), repo / "gather" / "1" / "model.onnx")
    (repo / "gather" / "config.pbtxt").write_text(
        f'name: "gather"\nbackend: "tract"\nmax_batch_size: {SPLIT_MAX}\n'
        'input [{ name: "i" data_type: TYPE_INT64 dims: [] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]\n'
        'instance_group [{ count: 2 }]\n' + SPLIT)
    s = Server(repo)
    yield s, repo
    s.stop()


def test_a_request_of_ten_batches_equals_the_reference_row_by_row(split_server):
    server, repo = split_server
    rows = 10 * SPLIT_MAX
    x = np.random.default_rng(3).standard_normal((rows, WIDTH)).astype(np.float32)
    want = ort.InferenceSession(str(repo / "split" / "1" / "model.onnx")).run(None, {"x": x})[0]
    reply = infer(server, "split", {"inputs": [{"name": "x", "shape": [rows, WIDTH], "datatype": "FP32",
                                                "data": x.flatten().tolist()}]})
    got = np.array(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
    assert got.shape == (rows, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    c = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        i = grpcclient.InferInput("x", [rows, WIDTH], "FP32")
        i.set_data_from_numpy(x)
        got = c.infer("split", [i]).as_numpy("y")
    finally:
        c.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Ten chunks ran (each counts as one request of the version).
    stats = requests.get(f"{server.base}/v2/models/split/stats", timeout=10).json()["model_stats"][0]
    assert stats["inference_count"] == 2 * rows


def test_a_failing_chunk_fails_the_whole_request(split_server):
    server, _ = split_server
    rows = 10 * SPLIT_MAX
    good = list(range(8)) * 5
    reply = infer(server, "gather", {"inputs": [{"name": "i", "shape": [rows], "datatype": "INT64", "data": good}]})
    assert reply["outputs"][0]["shape"] == [rows, 2]
    assert reply["outputs"][0]["data"][2 * 9:2 * 9 + 2] == [2.0, 3.0]
    bad = list(good)
    bad[7 * SPLIT_MAX + 1] = 99  # in the 8th chunk only
    r = requests.post(f"{server.base}/v2/models/gather/infer", timeout=60,
                      json={"inputs": [{"name": "i", "shape": [rows], "datatype": "INT64", "data": bad}]})
    assert r.status_code >= 400, r.text
    assert "outputs" not in r.json()
    # The model still answers.
    assert infer(server, "gather", {"inputs": [{"name": "i", "shape": [2], "datatype": "INT64",
                                                "data": [1, 2]}]})["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]


# ---- sluice profile ----------------------------------------------------------------------

def measured_profile(path, model, batch_sizes):
    """The profile JSON at `path`: version 1 of `model`, a latency and a throughput at
    each of `batch_sizes`."""
    p = json.loads(path.read_text())
    assert p["format"] == "sluice-profile/1" and p["model"] == model and p["version"] == "1"
    assert [b["batch_size"] for b in p["batches"]] == batch_sizes
    for b in p["batches"]:
        lat = b["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"]
        assert b["throughput_per_s"] > 0
    return p


def test_profile_measures_every_batch_size_and_writes_json_and_plots(tmp_path):
    repo = tmp_path / "repo"
    variant(repo, "m", 2.0, max_batch=4, extra='parameters: { key: "accuracy" value: { string_value: "0.8" } }\n')
    variant(repo, "n", 3.0, max_batch=2)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(
        [str(BIN), "profile", "--model-repository", str(repo), "--model", "m", "--model", "n",
         "--instances", "1,2", "--requests", "20", "--seconds-per-point", "0.05",
         "--output", str(out), "--compare-plot", str(tmp_path / "compare.svg")],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    p = measured_profile(out / "m.profile.json", "m", [1, 2, 4])
    assert [i["instances"] for i in p["instance_scaling"]] == [1, 2]
    assert p["accuracy"] == 0.8 and p["load_time_s"] > 0 and p["memory_bytes"] > 0
    n = json.loads((out / "n.profile.json").read_text())
    assert [b["batch_size"] for b in n["batches"]] == [1, 2]
    assert (out / "m.profile.svg").read_text().count("<polyline") >= 4
    assert "<circle" in (tmp_path / "compare.svg").read_text()
    # The table and the comparison.
    assert "p50 ms" in run.stdout and "best rows/s" in run.stdout
    # The server reads a profile next to the model.
    (repo / "m" / "profile.json").write_text((out / "m.profile.json").read_text())
    from conftest import Server
    s = Server(repo)
    try:
        assert wait_until(lambda: "seeded from the model's profile" in s.log(), timeout=10), s.log()
    finally:
        s.stop()


def test_profile_over_the_wire_measures_a_running_server(tmp_path):
    """`sluice profile --url`: the same profile from a running server (its config,
    index and infer endpoints), every measured request really served by it."""
    from conftest import Server
    repo = tmp_path / "repo"
    variant(repo, "m", 2.0, max_batch=4, extra='parameters: { key: "accuracy" value: { string_value: "0.8" } }\n')
    s = Server(repo)

    def counts():
        st = requests.get(f"{s.base}/v2/models/m/stats", timeout=10).json()["model_stats"][0]
        return int(st["inference_stats"]["success"]["count"]), int(st["inference_count"])

    try:
        before = counts()
        out = tmp_path / "m.json"
        run = subprocess.run(
            [str(BIN), "profile", "--url", s.base, "--model", "m", "--seconds-per-point", "0.2",
             "--instances", "2,1", "--output", str(out)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        p = measured_profile(out, "m", [1, 2, 4])
        # From the server's config and repository index.
        assert p["accuracy"] == 0.8 and p["instances"] == 1
        assert p["load_time_s"] > 0 and p["memory_bytes"] > 0
        assert "p50 ms" in run.stdout and (tmp_path / "m.svg").exists()
        # Two points per batch size (one client, then two), each at least one request of
        # that many rows, then one point of the largest batch per instance count, all
        # answered by the server.
        after = counts()
        assert after[0] - before[0] >= 8 and after[1] - before[1] >= 2 * (1 + 2 + 4) + 2 * 4, (before, after)
        # Each instance count set in place on the server (no reload), measured at the
        # largest batch, and the count it ran put back.
        scaling = p["instance_scaling"]
        assert [i["instances"] for i in scaling] == [1, 2], scaling
        assert all(i["batch_size"] == 4 and i["throughput_per_s"] > 0 for i in scaling), scaling
        live = requests.get(f"{s.base}/v2/models/m/instances", timeout=10).json()
        assert [v["count"] for v in live["versions"]] == [1], live
        log = s.log()
        assert log.count("instances changed in place") >= 3 and "from_instances=2" in log, log[-3000:]
        # Not reloaded: the repository index still gives the load of before the profile.
        index = requests.post(f"{s.base}/v2/repository/index", json={}, timeout=10).json()
        row = next(r for r in index if r["name"] == "m" and r["state"] == "READY")
        assert abs(row["load_duration_ms"] / 1e3 - p["load_time_s"]) < 1e-9, (row, p["load_time_s"])
        # A model the server does not have: the reason, and nothing written.
        bad = subprocess.run([str(BIN), "profile", "--url", s.base, "--model", "nope",
                              "--output", str(tmp_path / "nope.json")],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "nope" in bad.stderr, bad.stderr
        assert not (tmp_path / "nope.json").exists()
        # In process or over the wire, not both.
        both = subprocess.run([str(BIN), "profile", "--url", s.base, "--model-repository", str(repo),
                               "--model", "m"], capture_output=True, text=True, timeout=60)
        assert both.returncode != 0 and "--url" in both.stderr, both.stderr
    finally:
        s.stop()
