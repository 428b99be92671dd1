#!/usr/bin/env python3
"""Profiles of real models on this machine for `sluice simulate` / `sluice plan`, and the
simulator's calibration against a real replica.

1. Profiles: for each hardware class (`cpu1`: server pinned to one core, 1 intra-op
   thread; `cpu2`: two cores, 2 intra-op threads) a real `sluice serve` loads the models
   (the wide 1024-4096-4096-16 MLP of `scripts/make_batching_models.py`, the example
   `cnn` and `mlp`), and `sluice bench` single-stream measures one request of B rows for
   B = 1, 2, 4, 8: p50/p99/mean per batch size -> `sluice-profile/1` JSON. The load
   time is the time from spawn to the model answering. `--paced-qps R` measures with
   Poisson arrivals at R/s instead (`sluice bench --scenario server`), so each request
   meets an idle core and cold caches, as at a lightly loaded replica; `--think-ms M`
   measures one request at a time with exponential pauses of mean M ms between them
   (`sluice bench --think-ms`): the same idle core and cold caches, and no request ever
   queued behind another, so the profile holds run times only (the simulator adds the
   queueing). `--models` limits the models profiled.
2. Calibration (`--calibrate`): one `cpu1` replica of `wide` (dynamic batching, no
   queue delay, max batch 8) under an open-loop Poisson load from `sluice bench
   --scenario server`, and `sluice simulate` of the same rate and length with a fixed
   replica on the measured profile; p50/p90/p99 from both, attainment at the objective
   from the server's own request-duration histogram (scraped before and after) vs the
   simulator's.

    .venv/bin/python bench/autoscale_profiles.py [--calibrate] [--out bench/out/autoscale]
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serverproc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "sluice"
CLASSES = {"cpu1": {"cpus": "0", "threads": 1, "price": 0.05},
           "cpu2": {"cpus": "0,1", "threads": 2, "price": 0.10}}
MODELS = {  # name: (input, dims, output, dims, source)
    "wide": ("input", "[ 1024 ]", "output", "[ 16 ]", None),
    "cnn": ("image", "[ 3, 32, 32 ]", "logits", "[ 10 ]", ROOT / "examples/models/cnn/1/model.onnx"),
    "mlp": ("input", "[ 784 ]", "probabilities", "[ 10 ]", ROOT / "examples/models/mlp/1/model.onnx"),
}
BATCHES = [1, 2, 4, 8]


def wide_source():
    src = ROOT / "models-extra" / "batching" / "wide_d0" / "1" / "model.onnx"
    if not src.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_batching_models.py")], check=True)
    return src


def repository(out, threads):
    repo = out / f"repo-{threads}"
    for name, (inp, idims, outp, odims, src) in MODELS.items():
        d = repo / name / "1"
        d.mkdir(parents=True, exist_ok=True)
        target = d / "model.onnx"
        if not target.exists():
            target.symlink_to(src or wide_source())
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "tract"\nmax_batch_size: 8\n'
            f'input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: {idims} }} ]\n'
            f'output [ {{ name: "{outp}" data_type: TYPE_FP32 dims: {odims} }} ]\n'
            f'instance_group [ {{ count: 1 }} ]\n'
            'dynamic_batching { max_queue_delay_microseconds: 0 }\n'
            'parameters { key: "sluice_adaptive_batching" value: { string_value: "false" } }\n'
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}\n')
    return repo


def bench(port, model, out, *extra, cpus="1"):
    report = out / "bench.json"
    subprocess.run(["taskset", "-c", cpus, str(BIN), "bench", "-u", f"127.0.0.1:{port}", "-m", model,
                    "--quiet", "--report", str(report), *extra], check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())["runs"][0]


def profile_class(out, cls, spec, seconds, paced_qps=None, think_ms=None, models=tuple(MODELS)):
    repo = repository(out, spec["threads"])
    t0 = time.monotonic()
    proc, ports = serverproc.start(BIN, repo, "--metrics-port", "0", cpus=spec["cpus"])
    try:
        port = ports["HTTP"]
        while True:  # ready = every model loaded
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        load_time = time.monotonic() - t0
        profiles = {}
        for model in models:
            batches = []
            for b in BATCHES:
                # Back to back (single-stream), or paced: Poisson arrivals at a low rate, so
                # that each request meets the core and caches as a lightly loaded replica's
                # requests do (the regime `sluice simulate` is asked about).
                if paced_qps:
                    scenario = ["--scenario", "server", "--target-qps", str(paced_qps),
                                "--latency-bound-ms", "60000", "--seed", str(b)]
                elif think_ms:
                    scenario = ["--scenario", "single-stream", "--think-ms", str(think_ms), "--seed", str(b)]
                else:
                    scenario = ["--scenario", "single-stream"]
                run = bench(port, model, out, *scenario, "--batch-size", str(b),
                            "--duration", str(seconds), "--warmup", "1",
                            cpus="1" if spec["cpus"] == "0" else "0,1")
                lat = run["latency_ms"]
                batches.append({"batch_size": b, "latency_ms": {"p50": lat["p50"], "p90": lat["p90"],
                                                                "p99": lat["p99"], "mean": lat["mean"]},
                                "throughput_per_s": run["samples_per_s"]})
            profiles[model] = {"format": "sluice-profile/1", "model": model, "hardware_class": cls,
                               "backend": "tract", "instances": 1, "cost_per_hour": spec["price"],
                               "load_time_s": round(load_time, 3), "batches": batches}
            (out / "profiles" / f"{model}-{cls}.json").write_text(json.dumps(profiles[model], indent=1))
            print(f"{model} on {cls}: " + ", ".join(
                f"b{x['batch_size']} p50 {x['latency_ms']['p50']:.2f} p99 {x['latency_ms']['p99']:.2f} ms"
                for x in batches))
        return profiles
    finally:
        proc.kill()
        proc.wait()


def histogram(metrics_port, model):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    pat = re.compile(r'^sluice_inference_request_duration_seconds_bucket\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        m = pat.match(line)
        if m and f'model="{model}"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            out[le] = float(m.group(2))
    return out


def calibrate(out, rate, seconds, slo_ms):
    repo = repository(out, 1)
    proc, ports = serverproc.start(BIN, repo, "--metrics-port", "0", cpus="0")
    try:
        port, mport = ports["HTTP"], ports["metrics"]
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        # warm the model, then measure only the open-loop run
        bench(port, "wide", out, "--scenario", "single-stream", "--duration", "2", "--warmup", "0")
        before = histogram(mport, "wide")
        run = bench(port, "wide", out, "--scenario", "server", "--target-qps", str(rate), "--latency-bound-ms", str(slo_ms),
                    "--duration", str(seconds), "--warmup", "0", "--seed", "7")
        after = histogram(mport, "wide")
    finally:
        proc.kill()
        proc.wait()
    le = f"{slo_ms / 1e3:g}"
    total = after["+Inf"] - before.get("+Inf", 0)
    within = after[le] - before.get(le, 0)
    real = {"p50_ms": run["latency_ms"]["p50"], "p90_ms": run["latency_ms"]["p90"],
            "p99_ms": run["latency_ms"]["p99"], "attainment": within / total, "requests": total,
            "rate": run.get("scheduled_qps", rate)}
    cfg = out / "calibrate-config.json"
    cfg.write_text(json.dumps({"slo_ms": slo_ms, "max_batch": 8,
                               "policies": [{"name": "fixed-1", "kind": "fixed", "replicas": 1}]}))
    sims = []
    for seed in range(1, 6):
        subprocess.run([str(BIN), "simulate", "--profile", str(out / "profiles" / "wide-cpu1.json"),
                        "--trace", f"poisson:rate={rate},seconds={seconds}", "--config", str(cfg),
                        "--seed", str(seed), "--json", str(out / "sim.json")], check=True, stdout=subprocess.DEVNULL)
        sims.append(json.loads((out / "sim.json").read_text())["policies"][0])
    mean = lambda k: sum(s[k] for s in sims) / len(sims)  # noqa: E731
    sim = {"p50_ms": mean("p50_ms"), "p90_ms": mean("p90_ms"), "p99_ms": mean("p99_ms"),
           "attainment": mean("attainment")}
    print(f"calibration: wide on cpu1, Poisson {rate}/s for {seconds} s, objective {slo_ms} ms")
    for k in ["p50_ms", "p90_ms", "p99_ms", "attainment"]:
        print(f"  {k:<11} real {real[k]:8.3f}  simulated {sim[k]:8.3f}  ratio {sim[k] / real[k]:.3f}")
    (out / "calibration.json").write_text(json.dumps({"real": real, "simulated": sim, "runs": sims and len(sims)},
                                                     indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "autoscale"))
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per batch size")
    ap.add_argument("--classes", default="cpu1,cpu2")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--rate", type=float, default=None, help="calibration rate (default 60 %% of b1 capacity)")
    ap.add_argument("--calibrate-seconds", type=float, default=60.0)
    ap.add_argument("--slo-ms", type=float, default=50.0, help="a bucket bound of the server histogram")
    ap.add_argument("--paced-qps", type=float, default=None,
                    help="profile with Poisson arrivals at this rate instead of back to back")
    ap.add_argument("--think-ms", type=float, default=None,
                    help="profile one request at a time with exponential pauses of this mean")
    ap.add_argument("--models", default=",".join(MODELS), help="models to profile (comma-separated)")
    a = ap.parse_args()
    out = Path(a.out)
    (out / "profiles").mkdir(parents=True, exist_ok=True)
    for cls in a.classes.split(","):
        if cls:
            profile_class(out, cls, CLASSES[cls], a.seconds, a.paced_qps, a.think_ms,
                          [m for m in a.models.split(",") if m])
    if a.calibrate:
        prof = json.loads((out / "profiles" / "wide-cpu1.json").read_text())
        rate = a.rate or round(0.6 * 1e3 / prof["batches"][0]["latency_ms"]["mean"], 1)
        calibrate(out, rate, a.calibrate_seconds, a.slo_ms)


if __name__ == "__main__":
    main()
