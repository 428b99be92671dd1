"""Triton ensembles (`platform: "ensemble"`) served by a real `sluice serve` and called
with the unmodified tritonclient (HTTP binary, HTTP JSON, gRPC unary and streaming):

- a branching ensemble of generated ONNX models (two branches joined by a third step,
  one branch also an ensemble output), a chain and an ensemble inside an ensemble,
  each equal to the same chain computed with onnxruntime in Python;
- two branches gated with the test execution gates are both running before either is
  let go (parallel branches, observed);
- a request whose timeout passes in the first step never reaches the second (its
  statistics stay unchanged) and the client hears of it on time;
- concurrent ensemble requests are batched by a step's own dynamic batcher;
- the ensemble's statistics count its requests with wall-clock time; per-step times
  stay in the composing models' statistics; /metrics the same;
- an error in a step fails the request naming the step;
- `max_inflight_requests`: one in flight, then waiting, then 429;
- lifecycle: loading an ensemble loads its steps, a step a loaded ensemble uses cannot
  be unloaded alone, `unload_dependents` unloads an ensemble's steps, and a step's hot
  swap under an in-flight request does not fail it;
- Triton's refusal cases: a clear reason naming the step and tensor, everything else
  keeps serving;
- the two example pipelines end to end (when scripts/make_pipeline_models.py can build
  their models): a photo's top-5 equals Pillow + onnxruntime (ties allowed), and the
  embeddings have cosine >= 0.999 with tokenizers + onnxruntime + numpy.
"""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import (GATED_WIDTH, ROOT, Gate, Server, make_gated_model, metric, wait_for_queue,
                      wait_until)

PIPELINES = ROOT / "models-extra" / "pipelines"
LIB = Path(ort.__file__).parent / "capi"
# The folder of the module's repository, once made (for the onnxruntime references).
WORK_REPO = []
W = 4
RNG = np.random.default_rng(14)
WEIGHTS = {"ea": RNG.normal(size=(W, W)).astype(np.float32), "eb": RNG.normal(size=(W, W)).astype(np.float32)}


def save(repo, name, graph, config):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(config)


def vec(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [-1, W])


def batching_config(inputs, outputs, extra=""):
    ins = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {W} ] }}' for n in inputs)
    outs = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {W} ] }}' for n in outputs)
    return f"max_batch_size: 8\ninput [ {ins} ]\noutput [ {outs} ]\n{extra}"


def make_steps(repo):
    """ea: y = tanh(x @ Wa); eb: y = relu(x @ Wb + 0.5); ec: z = a * b + a."""
    for name, act in [("ea", "Tanh"), ("eb", "Relu")]:
        w = helper.make_tensor("w", TensorProto.FLOAT, [W, W], WEIGHTS[name].flatten())
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"])]
        inits = [w]
        if name == "eb":
            inits.append(helper.make_tensor("half", TensorProto.FLOAT, [1], [0.5]))
            nodes.append(helper.make_node("Add", ["m", "half"], ["m2"]))
            nodes.append(helper.make_node(act, ["m2"], ["y"]))
        else:
            nodes.append(helper.make_node(act, ["m"], ["y"]))
        save(repo, name, helper.make_graph(nodes, name, [vec("x")], [vec("y")], inits),
             batching_config(["x"], ["y"], "dynamic_batching { }\n"))
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "a"], ["z"])]
    save(repo, "ec", helper.make_graph(nodes, "ec", [vec("a"), vec("b")], [vec("z")]),
         batching_config(["a", "b"], ["z"], "dynamic_batching { }\n"))


def plus_model(repo, name, k, version=1, batching=False):
    """y = x + k on FP32 [1, 4] (max_batch_size 0), or [-1, 4] batched (8, dynamic)."""
    shape = [-1, W] if batching else [1, W]
    const = helper.make_tensor("k", TensorProto.FLOAT, [1], [float(k)])
    graph = helper.make_graph([helper.make_node("Add", ["x", "k"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / str(version) / "model.onnx"))
    if batching:
        config = batching_config(["x"], ["y"], "dynamic_batching { }\ninstance_group [ { count: 1 } ]\n")
    else:
        config = ('max_batch_size: 0\ninput [{ name: "x" data_type: TYPE_FP32 dims: [1, 4] }]\n'
                  'output [{ name: "y" data_type: TYPE_FP32 dims: [1, 4] }]\n')
    (repo / name / "config.pbtxt").write_text(config)


def step(model, inputs, outputs):
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" {ins} {outs} }}'


def ensemble(repo, name, inputs, outputs, steps, batch=8, dims=f"[ {W} ]", extra="", dtype="TYPE_FP32"):
    ins = ", ".join(f'{{ name: "{n}" data_type: {dtype} dims: {dims} }}' for n in inputs)
    outs = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: {dims} }}' for n in outputs)
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'platform: "ensemble"\nmax_batch_size: {batch}\ninput [ {ins} ]\noutput [ {outs} ]\n{extra}'
        f'ensemble_scheduling {{ step [ {", ".join(steps)} ] }}\n')


ONE = f"[ 1, {W} ]"

# Triton's refusal cases: model -> parts of the reason its index row must give.
REFUSED = {
    "bad_unmapped": ["ensemble 'bad_unmapped'", "step 0 (model 'ec')", "input 'b' of 'ec' is not mapped"],
    "bad_output_name": ["step 0 (model 'ea')", "output_map names 'nope'", "not an output of 'ea'"],
    "bad_dtype": ["tensor 'IN'", "ensemble input is TYPE_INT64", "input 'x' of step 0 (model 'ea') takes TYPE_FP32"],
    "bad_cycle": ["the steps form a cycle", "step 0 (model 'ec')", "step 1 (model 'ea')"],
    "bad_missing_model": ["step 0 (model 'no_such_model')", "not in the repository"],
    "bad_warmup": ["ensemble 'bad_warmup'", "model_warmup must not be set"],
    "bad_unused": ["tensor 'SPARE' written by step 1 (model 'eb')", "neither read by a step nor an ensemble output"],
    "bad_unread_input": ["ensemble input 'UNUSED' is not read by any step"],
    "bad_shape": ["tensor 'IN'", "input 'x' of step 0 (model 'ea')", "[-1, 5]"],
}


def make_refused(repo):
    ensemble(repo, "bad_unmapped", ["IN"], ["OUT"], [step("ec", {"a": "IN"}, {"z": "OUT"})])
    ensemble(repo, "bad_output_name", ["IN"], ["OUT"], [step("ea", {"x": "IN"}, {"nope": "OUT"})])
    ensemble(repo, "bad_dtype", ["IN"], ["OUT"], [step("ea", {"x": "IN"}, {"y": "OUT"})], dtype="TYPE_INT64")
    ensemble(repo, "bad_cycle", ["IN"], ["OUT"], [
        step("ec", {"a": "IN", "b": "T2"}, {"z": "T1"}), step("ea", {"x": "T1"}, {"y": "T2"}),
        step("eb", {"x": "T1"}, {"y": "OUT"})])
    ensemble(repo, "bad_missing_model", ["IN"], ["OUT"], [step("no_such_model", {"x": "IN"}, {"y": "OUT"})])
    ensemble(repo, "bad_warmup", ["IN"], ["OUT"], [step("ea", {"x": "IN"}, {"y": "OUT"})],
             extra='model_warmup [ { name: "w" batch_size: 1 inputs { key: "IN" value: '
                   '{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n')
    ensemble(repo, "bad_unused", ["IN"], ["OUT"], [
        step("ea", {"x": "IN"}, {"y": "OUT"}), step("eb", {"x": "IN"}, {"y": "SPARE"})])
    (repo / "bad_unread_input" / "1").mkdir(parents=True)
    (repo / "bad_unread_input" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "UNUSED" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'ensemble_scheduling { step [ ' + step("ea", {"x": "IN"}, {"y": "OUT"}) + ' ] }\n')
    ensemble(repo, "bad_shape", ["IN"], ["OUT"], [step("ea", {"x": "IN"}, {"y": "OUT"})], dims="[ 5 ]")


def pipelines_available():
    if (PIPELINES / "efficientnet_lite0" / "1" / "model.onnx").exists() and \
            (PIPELINES / "minilm" / "1" / "model.onnx").exists():
        return None
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_pipeline_models.py")],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return "the pipeline models cannot be built: " + (r.stderr or r.stdout).strip()[-600:]
    return None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ensemble-repo")
    gates = tmp_path_factory.mktemp("ensemble-gates")
    make_steps(repo)
    ensemble(repo, "e_branch", ["IN"], ["OUT", "MID"], [
        step("ea", {"x": "IN"}, {"y": "MID"}), step("eb", {"x": "IN"}, {"y": "TB"}),
        step("ec", {"a": "MID", "b": "TB"}, {"z": "OUT"})])
    ensemble(repo, "e_chain", ["IN"], ["OUT"], [
        step("ea", {"x": "IN"}, {"y": "T"}), step("eb", {"x": "T"}, {"y": "OUT"})])
    ensemble(repo, "e_nested", ["IN"], ["OUT"], [
        step("e_chain", {"IN": "IN"}, {"OUT": "T"}), step("ea", {"x": "T"}, {"y": "OUT"})])
    ensemble(repo, "e_var", ["IN"], ["OUT"], [step("ea", {"x": "IN"}, {"y": "OUT"})], dims="[ -1 ]")
    # Gated steps (each run waits for the test's byte).
    g = {name: make_gated_model(repo, gates, name) for name in ["g_left", "g_right", "g_first", "g_swap"]}
    ensemble(repo, "e_parallel", ["X"], ["L", "R"], [
        step("g_left", {"x": "X"}, {"y": "L"}), step("g_right", {"x": "X"}, {"y": "R"})], batch=0, dims=ONE)
    plus_model(repo, "p_after", 1)
    ensemble(repo, "e_deadline", ["X"], ["OUT"], [
        step("g_first", {"x": "X"}, {"y": "M"}), step("p_after", {"x": "M"}, {"y": "OUT"})], batch=0, dims=ONE)
    plus_model(repo, "p_swap", 1)
    ensemble(repo, "e_swap", ["X"], ["OUT"], [
        step("g_swap", {"x": "X"}, {"y": "M"}), step("p_swap", {"x": "M"}, {"y": "OUT"})], batch=0, dims=ONE)
    plus_model(repo, "g_batch", 1, batching=True)
    (gates / "g_batch").unlink(missing_ok=True)
    os.mkfifo(gates / "g_batch")
    g["g_batch"] = Gate(gates / "g_batch")
    ensemble(repo, "e_batch", ["IN"], ["OUT"], [step("g_batch", {"x": "IN"}, {"y": "OUT"})])
    plus_model(repo, "solo", 2)
    ensemble(repo, "e_solo", ["X"], ["OUT"], [step("solo", {"x": "X"}, {"y": "OUT"})], batch=0, dims=ONE)
    make_refused(repo)
    skip_reason = pipelines_available()
    if skip_reason is None:
        for model in sorted(p for p in PIPELINES.iterdir() if p.is_dir()):
            (repo / model.name / "1").mkdir(parents=True)
            shutil.copy(model / "config.pbtxt", repo / model.name / "config.pbtxt")
            for f in (model / "1").iterdir():
                (repo / model.name / "1" / f.name).symlink_to(f)
        for e in sorted((ROOT / "examples" / "pipelines" / "ensembles").iterdir()):
            (repo / e.name / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy(e / "config.pbtxt", repo / e.name / "config.pbtxt")
    WORK_REPO[:] = [repo]
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "*",
               "--test-execution-gates", str(gates), "--ort-library", str(LIB))
    try:
        yield {"server": s, "repo": repo, "gates": g, "pipelines_skip": skip_reason}
    finally:
        for gate in g.values():
            gate.open_for_good()
            gate.close()
        assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def server(setup):
    return setup["server"]


@pytest.fixture(scope="module")
def http(server):
    return httpclient.InferenceServerClient(server.http_url)


@pytest.fixture(scope="module")
def grpc_client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def ort_run(name, feeds):
    path = WORK_REPO[0] / name / "1" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def fp32_input(module, name, arr, binary=True):
    inp = module.InferInput(name, list(arr.shape), "FP32")
    if module is httpclient:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def stats(server, model):
    r = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["model_stats"][0]


def success(server, model):
    s = stats(server, model)["inference_stats"]["success"]
    return int(s["count"]), int(s["ns"])


def post(server, model, name, x, **params):
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    if params:
        body["parameters"] = params
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=60)


def index(server):
    return {m["name"]: m for m in requests.post(f"{server.base}/v2/repository/index", timeout=10).json()}


# --- correctness -----------------------------------------------------------------------------


def test_branching_chain_and_nested_ensembles_equal_onnxruntime(server, http, grpc_client):
    x = RNG.normal(size=(3, W)).astype(np.float32)
    mid = ort_run("ea", {"x": x})
    tb = ort_run("eb", {"x": x})
    out = ort_run("ec", {"a": mid, "b": tb})
    chain = ort_run("eb", {"x": mid})
    nested = ort_run("ea", {"x": chain})
    for client, module in [(http, httpclient), (grpc_client, grpcclient)]:
        r = client.infer("e_branch", [fp32_input(module, "IN", x)])
        np.testing.assert_allclose(r.as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.as_numpy("MID"), mid, rtol=1e-5, atol=1e-6)
        r = client.infer("e_chain", [fp32_input(module, "IN", x)])
        np.testing.assert_allclose(r.as_numpy("OUT"), chain, rtol=1e-5, atol=1e-6)
        r = client.infer("e_nested", [fp32_input(module, "IN", x)])
        np.testing.assert_allclose(r.as_numpy("OUT"), nested, rtol=1e-5, atol=1e-6)
    # HTTP JSON, one output asked for.
    r = http.infer("e_branch", [fp32_input(httpclient, "IN", x, binary=False)],
                   outputs=[httpclient.InferRequestedOutput("OUT", binary_data=False)])
    np.testing.assert_allclose(r.as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
    assert r.as_numpy("MID") is None
    # gRPC streaming.
    results = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 2:
            done.set()

    stream = grpcclient.InferenceServerClient(server.grpc_url)
    stream.start_stream(callback=callback)
    try:
        stream.async_stream_infer("e_branch", [fp32_input(grpcclient, "IN", x)], request_id="s1")
        stream.async_stream_infer("e_chain", [fp32_input(grpcclient, "IN", x)], request_id="s2")
        assert done.wait(30), results
    finally:
        stream.stop_stream()
        stream.close()
    by_id = {res.get_response().id: res for res, err in results if err is None}
    assert set(by_id) == {"s1", "s2"}, results
    np.testing.assert_allclose(by_id["s1"].as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_id["s2"].as_numpy("OUT"), chain, rtol=1e-5, atol=1e-6)


def test_an_ensemble_is_a_normal_model_to_clients(server, http, grpc_client):
    assert http.is_model_ready("e_branch") and grpc_client.is_model_ready("e_branch")
    meta = http.get_model_metadata("e_branch")
    assert meta["platform"] == "ensemble" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == ["IN"]
    assert sorted(o["name"] for o in meta["outputs"]) == ["MID", "OUT"]
    config = http.get_model_config("e_branch")
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["ea", "eb", "ec"]
    gmeta = grpc_client.get_model_metadata("e_chain", as_json=True)
    assert gmeta["platform"] == "ensemble"
    assert grpc_client.get_inference_statistics("e_chain", as_json=True)["model_stats"][0]["name"] == "e_chain"


def test_an_error_in_a_step_names_the_step(server, http):
    r = post(server, "e_var", "IN", np.ones((1, 5), np.float32))
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "ensemble 'e_var': step 0 (model 'ea')" in msg, msg
    # The same ensemble answers a right-shaped request.
    x = RNG.normal(size=(2, W)).astype(np.float32)
    r = http.infer("e_var", [fp32_input(httpclient, "IN", x)])
    np.testing.assert_allclose(r.as_numpy("OUT"), ort_run("ea", {"x": x}), rtol=1e-5, atol=1e-6)


# --- dataflow ----------------------------------------------------------------------------------


def test_parallel_branches_run_at_the_same_time(setup, server):
    g = setup["gates"]
    x = np.arange(W, dtype=np.float32).reshape(1, W)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=post(server, "e_parallel", "X", x)))
    t.start()
    try:
        # Both branches are in their engines while neither has been let go.
        wait_for_queue(server, "g_left", running=1, queued=0)
        wait_for_queue(server, "g_right", running=1, queued=0)
        assert "r" not in result
    finally:
        g["g_left"].release()
        g["g_right"].release()
        t.join(30)
    r = result["r"]
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["L"] == out["R"] == (x + 1).flatten().tolist()


def test_a_timed_out_request_never_reaches_later_steps(setup, server):
    g = setup["gates"]
    before = success(server, "p_after")[0]
    x = np.ones((1, W), np.float32)
    # 300 ms (the v2 timeout is in microseconds) while the first step is held.
    r = post(server, "e_deadline", "X", x, timeout=300_000)
    assert r.status_code == 504, r.text
    assert "ensemble 'e_deadline'" in r.json()["error"] and "timeout" in r.json()["error"], r.text
    assert metric(server, "sluice_inference_requests_total", model="e_deadline", outcome="timeout") == 1
    # A request without a timeout runs after the held run (one instance, in order): once
    # it is answered, the timed-out one is over too, and only this one reached p_after.
    # (Two bytes: one for the held run, if it had started, and one for this one.)
    g["g_first"].release(2)
    r = post(server, "e_deadline", "X", x)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0] * W, r.text
    assert success(server, "p_after")[0] == before + 1


def test_concurrent_ensemble_requests_are_batched_per_step(setup, server):
    g = setup["gates"]["g_batch"]
    before = stats(server, "g_batch")
    results = []
    rows = [np.full((1, W), i, np.float32) for i in range(5)]

    def send(x):
        results.append((x, post(server, "e_batch", "IN", x)))

    first = threading.Thread(target=send, args=(rows[0],))
    first.start()
    wait_for_queue(server, "g_batch", running=1, queued=0)
    rest = [threading.Thread(target=send, args=(x,)) for x in rows[1:]]
    for t in rest:
        t.start()
    wait_for_queue(server, "g_batch", running=1, queued=4)
    g.release(2)
    for t in [first, *rest]:
        t.join(30)
    for x, r in results:
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == (x + 1).flatten().tolist()
    after = stats(server, "g_batch")
    assert int(after["execution_count"]) - int(before["execution_count"]) == 2
    assert int(after["inference_count"]) - int(before["inference_count"]) == 5
    assert any(b["batch_size"] == 4 for b in after["batch_stats"]), after["batch_stats"]


def test_ensemble_statistics_are_its_own_wall_clock_requests(server, http):
    names = ["e_chain", "ea", "eb"]
    before = {n: success(server, n) for n in names}
    x = RNG.normal(size=(2, W)).astype(np.float32)
    for _ in range(5):
        http.infer("e_chain", [fp32_input(httpclient, "IN", x)])
    after = {n: success(server, n) for n in names}
    delta = {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in names}
    assert delta["e_chain"][0] == 5 and delta["ea"][0] == 5 and delta["eb"][0] == 5, delta
    # Each step's time lies inside its ensemble request's, one after the other: the
    # ensemble's wall-clock time is at least the steps' together.
    assert delta["e_chain"][1] >= delta["ea"][1] + delta["eb"][1], delta
    s = stats(server, "e_chain")["inference_stats"]
    # No queue or compute time of its own (those are the steps').
    assert int(s["queue"]["count"]) == 0 and int(s["compute_infer"]["count"]) == 0, s
    assert metric(server, "sluice_inference_requests_total", model="e_chain", outcome="success") == after["e_chain"][0]


def test_max_inflight_requests_bounds_a_step_then_refuses(tmp_path):
    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "g_limit")
    ensemble(tmp_path, "e_limited", ["X"], ["OUT"], [step("g_limit", {"x": "X"}, {"y": "OUT"})], batch=0,
             dims=ONE, extra="")
    cfg = tmp_path / "e_limited" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("ensemble_scheduling { step", "ensemble_scheduling { max_inflight_requests: 1 step"))
    s = Server(tmp_path, "--queue-capacity", "1", "--test-execution-gates", str(gates))
    try:
        x = np.ones((1, W), np.float32)
        results = {}

        def send(key):
            results[key] = post(s, "e_limited", "X", x)

        threads = [threading.Thread(target=send, args=("first",))]
        threads[0].start()
        wait_for_queue(s, "g_limit", running=1, queued=0)
        threads.append(threading.Thread(target=send, args=("second",)))
        threads[1].start()
        # The second waits at the step's bound (not in the model's queue).
        assert wait_until(lambda: metric(s, "sluice_inference_in_flight", model="e_limited") == 2, timeout=30)
        assert metric(s, "sluice_inference_in_flight", model="g_limit") == 1
        send("third")
        assert results["third"].status_code == 429, results["third"].text
        assert "max_inflight_requests 1" in results["third"].json()["error"]
        assert "step 0 (model 'g_limit')" in results["third"].json()["error"]
        gate.release(2)
        for t in threads:
            t.join(30)
        assert results["first"].status_code == 200 and results["second"].status_code == 200
    finally:
        gate.open_for_good()
        gate.close()
        assert s.stop() == 0, s.log()[-3000:]


def test_a_cached_ensemble_answers_the_whole_pipeline_and_never_outlives_a_step_swap(tmp_path):
    """`response_cache { enable: true }` on an ensemble: a hit answers the whole pipeline
    (no step runs), counted as Triton counts hits; a composing model with its own cache
    caches independently; a step's hot swap changes the key, so the next answer is the
    new pipeline's, never the old entry."""
    plus_model(tmp_path, "c_first", 1, batching=True)
    plus_model(tmp_path, "c_second", 2, batching=True)
    ensemble(tmp_path, "e_cached", ["IN"], ["OUT"], [
        step("c_first", {"x": "IN"}, {"y": "M"}), step("c_second", {"x": "M"}, {"y": "OUT"})],
        extra="response_cache { enable: true }\n")
    cfg = tmp_path / "c_first" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "response_cache { enable: true }\n")
    s = Server(tmp_path, "--model-control-mode", "explicit", "--load-model", "*",
               "--cache-config", "local,size=1048576")
    try:
        def counts(model):
            m = stats(s, model)
            i = m["inference_stats"]
            return (int(i["cache_hit"]["count"]), int(i["cache_miss"]["count"]), int(i["success"]["count"]),
                    int(m["execution_count"]))

        def out(x, **params):
            r = post(s, "e_cached", "IN", x, **params)
            assert r.status_code == 200, r.text
            return np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape)

        x = RNG.normal(size=(2, W)).astype(np.float32)
        first = out(x)
        np.testing.assert_allclose(first, x + 3, rtol=1e-6)
        assert counts("e_cached")[:3] == (0, 1, 1)
        second_before = counts("c_second")
        again = out(x)
        assert np.array_equal(again, first)
        assert counts("e_cached")[:3] == (1, 1, 2), "the second request was not a hit"
        assert counts("c_second") == second_before, "a hit ran a step"
        # The composing model's own cache: x went through c_first, so a direct request is a hit.
        direct = post(s, "c_first", "x", x)
        assert direct.status_code == 200, direct.text
        assert counts("c_first")[0] == 1 and counts("c_first")[3] == 1
        # Another input misses; a request that skips the cache runs the steps.
        y = x + 1
        np.testing.assert_allclose(out(y), y + 3, rtol=1e-6)
        np.testing.assert_allclose(out(x, sluice_cache="skip"), x + 3, rtol=1e-6)
        assert counts("c_second")[3] == second_before[3] + 2
        # c_second gets a version 2 (y = x + 20) and swaps to it: the same input answers anew.
        plus_model(tmp_path, "c_second", 20, version=2, batching=True)
        r = requests.post(f"{s.base}/v2/repository/models/c_second/load", timeout=60)
        assert r.status_code == 200, r.text
        assert wait_until(lambda: requests.get(f"{s.base}/v2/models/c_second/versions/2/ready",
                                               timeout=10).status_code == 200, timeout=60)
        hits = counts("e_cached")[0]
        np.testing.assert_allclose(out(x), x + 21, rtol=1e-6)
        assert counts("e_cached")[0] == hits, "an entry from before the step's swap answered"
        np.testing.assert_allclose(out(x), x + 21, rtol=1e-6)
        assert counts("e_cached")[0] == hits + 1
    finally:
        assert s.stop() == 0, s.log()[-3000:]


# --- lifecycle ---------------------------------------------------------------------------------


def test_a_step_hot_swap_does_not_fail_an_in_flight_request(setup, server):
    g, repo = setup["gates"], setup["repo"]
    x = np.ones((1, W), np.float32)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=post(server, "e_swap", "X", x)))
    t.start()
    try:
        wait_for_queue(server, "g_swap", running=1, queued=0)
        # p_swap (the second step) gets a version 2 (y = x + 10) and swaps to it.
        plus_model(repo, "p_swap", 10, version=2)
        r = requests.post(f"{server.base}/v2/repository/models/p_swap/load", timeout=60)
        assert r.status_code == 200, r.text
        assert requests.get(f"{server.base}/v2/models/p_swap/versions/2/ready", timeout=10).status_code == 200
    finally:
        g["g_swap"].release()
        t.join(30)
    r = result["r"]
    assert r.status_code == 200, r.text
    # g_swap adds 1, then the new p_swap adds 10.
    assert r.json()["outputs"][0]["data"] == [12.0] * W


def test_steps_are_loaded_with_and_kept_for_their_ensembles(server, http):
    base = server.base
    # A step that loaded ensembles use cannot be unloaded alone.
    r = requests.post(f"{base}/v2/repository/models/ea/unload", timeout=30)
    assert r.status_code == 400, r.text
    for part in ["'ea' is a step of the loaded ensemble(s)", "'e_branch'", "'e_chain'", "unload_dependents"]:
        assert part in r.json()["error"], r.text
    assert http.is_model_ready("ea")
    # Unloading an ensemble alone keeps its steps; with unload_dependents they go too
    # (unless another loaded ensemble uses them).
    r = requests.post(f"{base}/v2/repository/models/e_solo/unload", timeout=30)
    assert r.status_code == 200, r.text
    assert not http.is_model_ready("e_solo") and http.is_model_ready("solo")
    r = requests.post(f"{base}/v2/repository/models/e_solo/load", timeout=60)
    assert r.status_code == 200 and http.is_model_ready("e_solo"), r.text
    r = requests.post(f"{base}/v2/repository/models/e_solo/unload", json={"parameters": {"unload_dependents": True}},
                      timeout=30)
    assert r.status_code == 200, r.text
    rows = index(server)
    assert rows["e_solo"]["state"] != "READY" and rows["solo"]["state"] != "READY", (rows["e_solo"], rows["solo"])
    # Loading the ensemble loads its step again; it answers.
    r = requests.post(f"{base}/v2/repository/models/e_solo/load", timeout=60)
    assert r.status_code == 200, r.text
    assert http.is_model_ready("solo")
    r = post(server, "e_solo", "X", np.ones((1, W), np.float32))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0] * W, r.text
    # gRPC unload with unload_dependents keeps a step another ensemble still uses.
    g = grpcclient.InferenceServerClient(server.grpc_url)
    g.unload_model("e_var", unload_dependents=True)
    assert not http.is_model_ready("e_var") and http.is_model_ready("ea")


def test_a_step_reloaded_with_other_inputs_makes_its_ensemble_unavailable_until_it_fits(tmp_path):
    """Triton reloads an ensemble's dependents with a composing model: a step that loads
    again with inputs the ensemble no longer maps makes the ensemble unavailable, with
    the reason, at that moment (not at each request); the step and every other model
    serve on; once the step fits again, the ensemble loads again by itself."""
    plus_model(tmp_path, "r_step", 1, batching=True)
    plus_model(tmp_path, "r_other", 5, batching=True)
    ensemble(tmp_path, "e_recheck", ["IN"], ["OUT"], [step("r_step", {"x": "IN"}, {"y": "OUT"})])
    original = (tmp_path / "r_step" / "config.pbtxt").read_text()
    s = Server(tmp_path, "--model-control-mode", "explicit", "--load-model", "*")
    x = RNG.normal(size=(2, W)).astype(np.float32)

    def load(model):
        r = requests.post(f"{s.base}/v2/repository/models/{model}/load", timeout=60)
        assert r.status_code == 200, r.text

    def rows():
        return index(s)

    try:
        r = post(s, "e_recheck", "IN", x)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape), x + 1,
                                   rtol=1e-6)
        # r_step now takes "v" (a new model file and config): the ensemble maps "x".
        const = helper.make_tensor("k", TensorProto.FLOAT, [1], [100.0])
        graph = helper.make_graph([helper.make_node("Add", ["v", "k"], ["y"])], "r_step",
                                  [helper.make_tensor_value_info("v", TensorProto.FLOAT, [-1, W])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, W])], [const])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(tmp_path / "r_step" / "1" / "model.onnx"))
        (tmp_path / "r_step" / "config.pbtxt").write_text(original.replace('name: "x"', 'name: "v"'))
        load("r_step")
        row = rows()["e_recheck"]
        assert row["state"] == "UNAVAILABLE", row
        for part in ["a step of this ensemble changed", "'r_step'", "'x'"]:
            assert part in row.get("reason", ""), (part, row)
        r = post(s, "e_recheck", "IN", x)
        assert r.status_code in (400, 503), r.text
        assert "a step of this ensemble changed" in r.json()["error"], r.text
        # The step serves with its new input; the other model is untouched.
        r = post(s, "r_step", "v", x)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape), x + 100,
                                   rtol=1e-6)
        r = post(s, "r_other", "x", x)
        assert r.status_code == 200, r.text
        # The step fits again (back to "x", y = x + 7): the ensemble loads by itself.
        plus_model_file = tmp_path / "r_step" / "1" / "model.onnx"
        graph = helper.make_graph([helper.make_node("Add", ["x", "k"], ["y"])], "r_step",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, W])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, W])],
                                  [helper.make_tensor("k", TensorProto.FLOAT, [1], [7.0])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(plus_model_file))
        (tmp_path / "r_step" / "config.pbtxt").write_text(original)
        load("r_step")
        assert rows()["e_recheck"]["state"] == "READY", rows()["e_recheck"]
        r = post(s, "e_recheck", "IN", x)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape), x + 7,
                                   rtol=1e-6)
    finally:
        assert s.stop() == 0, s.log()[-3000:]


def test_refused_ensembles_name_the_step_and_tensor_and_others_serve(server, http):
    rows = index(server)
    for name, parts in REFUSED.items():
        assert rows[name]["state"] != "READY", rows[name]
        for part in parts:
            assert part in rows[name].get("reason", ""), (name, part, rows[name])
        r = post(server, name, "IN", np.ones((1, W), np.float32))
        assert r.status_code in (400, 503), r.text
    x = RNG.normal(size=(1, W)).astype(np.float32)
    np.testing.assert_allclose(http.infer("e_chain", [fp32_input(httpclient, "IN", x)]).as_numpy("OUT"),
                               ort_run("eb", {"x": ort_run("ea", {"x": x})}), rtol=1e-5, atol=1e-6)


# --- the example pipelines -----------------------------------------------------------------------


def test_image_pipeline_top5_equals_pillow_and_onnxruntime(setup, http, grpc_client):
    if setup["pipelines_skip"]:
        pytest.skip(setup["pipelines_skip"])
    from test_builtin import IMAGES, bytes_input, pil_reference
    session = ort.InferenceSession(str(PIPELINES / "efficientnet_lite0" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    labels = (PIPELINES / "imagenet_top5" / "1" / "labels.txt").read_text().splitlines()
    for name, top1 in [("coffee.png", 967), ("rocket.jpg", 657), ("chelsea.png", None)]:
        data = (IMAGES / name).read_bytes()
        x = pil_reference(data, (224, 224), shorter_side=256, mean=127.0, std=128.0).transpose(2, 0, 1)[None]
        logits = session.run(None, {"input": x.astype(np.float32)})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        ref_top = np.argsort(-p, kind="stable")[:5]
        for client, module in [(http, httpclient), (grpc_client, grpcclient)]:
            r = client.infer("image_classifier", [bytes_input(module, "IMAGE", [data])])
            classes, probs = r.as_numpy("CLASSES")[0], r.as_numpy("PROBABILITIES")[0]
            names = [s.decode() for s in r.as_numpy("LABELS")[0]]
            if top1 is not None:
                assert classes[0] == top1, (name, classes)
            assert names == [labels[c] for c in classes]
            for got, want in zip(classes, ref_top):
                if got != want:  # a tie within the decoders' noise
                    assert abs(p[got] - p[want]) < 0.02, (name, classes, ref_top)
            assert np.allclose(probs, p[classes], atol=0.03), (name, probs, p[classes])


def test_text_pipeline_embeddings_equal_tokenizers_onnxruntime_numpy(setup, http, grpc_client):
    if setup["pipelines_skip"]:
        pytest.skip(setup["pipelines_skip"])
    from test_builtin import SENTENCES, bytes_input, reference_tokenizer
    session = ort.InferenceSession(str(PIPELINES / "minilm" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = reference_tokenizer().encode_batch(SENTENCES)
    feeds = {"input_ids": np.array([e.ids for e in enc], np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
             "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    hidden = session.run(None, feeds)[0]
    m = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    for client, module in [(http, httpclient), (grpc_client, grpcclient)]:
        r = client.infer("text_embedder", [bytes_input(module, "TEXT", [s.encode() for s in SENTENCES])])
        emb = r.as_numpy("EMBEDDING")
        assert emb.shape == (len(SENTENCES), 384)
        cosine = (emb * want).sum(1) / np.linalg.norm(emb, axis=1)
        assert cosine.min() >= 0.999, cosine
