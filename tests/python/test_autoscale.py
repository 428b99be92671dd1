"""`sluice simulate` and `sluice plan` end to end: the real binary on profile, trace,
config and Triton ensemble files, its JSON and SVG outputs, its errors.

The policies, simulator and planner are unit-tested in `crates/sluice-autoscale`; here
the simulator's mean latency is checked once more against the M/D/1 closed form computed
in Python (an independent reference), and the planner's plan against the homogeneous
baselines it prints."""

import json
import re
import subprocess

import pytest

from conftest import BIN


def run(*args, check=True):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def profile(tmp_path, name, model="m", cls="cpu1", price=0.05, batches=((1, 2.0, 3.0), (4, 5.0, 7.0), (8, 8.0, 11.0)),
            service=None, load_time=2.0):
    p = {"model": model, "hardware_class": cls, "cost_per_hour": price, "load_time_s": load_time,
         "batches": [{"batch_size": b, "latency_ms": {"p50": p50, "p99": p99}} for b, p50, p99 in batches]}
    if service:
        p["service"] = service
    path = tmp_path / name
    path.write_text(json.dumps(p))
    return path


def test_simulate_compares_every_policy_and_writes_json_and_plot(tmp_path):
    prof = profile(tmp_path, "p.json")
    out = run("simulate", "--profile", prof, "--trace", "mmpp:low=200,high=1500,dwell_low=60,dwell_high=15,seconds=600",
              "--slo-ms", 50, "--json", tmp_path / "r.json", "--plot", tmp_path / "r.svg")
    report = json.loads((tmp_path / "r.json").read_text())
    names = [p["policy"] for p in report["policies"]]
    assert names == ["hpa-util-50", "hpa-util-70", "keda-rps", "kpa", "ray", "infaas", "sluice-slo"]
    for p in report["policies"]:
        assert 0.0 <= p["attainment"] <= 1.0
        assert p["replica_seconds"] >= 600 * 1  # never below the 1-replica minimum
        assert p["cost"] == pytest.approx(p["replica_seconds"] / 3600 * 0.05)
        assert p["requests"] == report["trace_requests"] > 0
        assert p["policy"] in out.stdout
    svg = (tmp_path / "r.svg").read_text()
    assert svg.lstrip().startswith("<svg") and all(n in svg for n in names)


def test_simulated_mean_latency_matches_md1_in_python(tmp_path):
    # one replica, deterministic 10 ms runs at batch 1 only: M/D/1
    prof = profile(tmp_path, "d.json", batches=((1, 10.0, 10.0),), service="deterministic", load_time=0)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"slo_ms": 1000, "max_batch": 1,
                               "policies": [{"name": "one", "kind": "fixed", "replicas": 1}]}))
    mu = 100.0
    for rho in (0.5, 0.8):
        lam = rho * mu
        run("simulate", "--profile", prof, "--trace", f"poisson:rate={lam},seconds={300_000 / lam}",
            "--config", cfg, "--json", tmp_path / "o.json")
        got = json.loads((tmp_path / "o.json").read_text())["policies"][0]["mean_ms"] / 1e3
        expect = 1 / mu + rho / (2 * mu * (1 - rho))  # service + Pollaczek-Khinchine wait
        assert got == pytest.approx(expect, rel=0.03), (rho, got, expect)


def test_csv_trace_and_idle_trace_cost_only_the_minimum(tmp_path):
    prof = profile(tmp_path, "p.json")
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp\n" + "".join(f"{1000 + i * 0.01}\n" for i in range(500)))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"slo_ms": 50, "policies": [
        {"name": "hpa", "kind": "hpa", "min_replicas": 2, "max_replicas": 4,
         "metric": {"type": "utilization", "target": 0.5}}]}))
    run("simulate", "--profile", prof, "--trace-csv", csv, "--config", cfg, "--json", tmp_path / "o.json")
    p = json.loads((tmp_path / "o.json").read_text())["policies"][0]
    assert p["requests"] == 500 and p["attainment"] == 1.0
    # idle: a step trace with rate 0 keeps exactly the 2-replica minimum for 300 s
    run("simulate", "--profile", prof, "--trace", "step:rates=0,every=300", "--config", cfg, "--json", tmp_path / "i.json")
    p = json.loads((tmp_path / "i.json").read_text())["policies"][0]
    assert p["requests"] == 0 and p["scaling_actions"] == 0
    assert p["replica_seconds"] == pytest.approx(600.0)
    assert p["cost"] == pytest.approx(600.0 / 3600 * 0.05)


ENSEMBLE = """name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    { model_name: "pre" model_version: -1 input_map { key: "in" value: "x" } output_map { key: "out" value: "a" } },
    { model_name: "net" model_version: -1 input_map { key: "in" value: "a" } output_map { key: "out" value: "b" } },
    { model_name: "post" model_version: -1 input_map { key: "in" value: "b" } output_map { key: "out" value: "y" } }
  ]
}
"""


def test_plan_reads_a_triton_ensemble_and_beats_homogeneous_plans(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "config.pbtxt").write_text(ENSEMBLE)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    # two classes: cpu1 (cheap, slower), cpu2 (twice the price, < 2x faster)
    for model, base in [("pre", 1.0), ("net", 6.0), ("post", 0.5)]:
        profile(profiles, f"{model}-cpu1.json", model=model, cls="cpu1", price=0.05, load_time=1,
                batches=((1, base, base * 1.5), (8, base * 3, base * 4.5)))
        profile(profiles, f"{model}-cpu2.json", model=model, cls="cpu2", price=0.10, load_time=1,
                batches=((1, base * 0.6, base * 0.9), (8, base * 1.8, base * 2.7)))
    out = run("plan", "--ensemble", tmp_path / "pipe", "--profiles", profiles, "--trace",
              "poisson:rate=400,seconds=60", "--slo-ms", 60, "--max-replicas", 4, "--compare-homogeneous",
              "--json", tmp_path / "plan.json")
    result = json.loads((tmp_path / "plan.json").read_text())
    plan = result["plan"]
    assert [s["stage"] for s in plan["stages"]] == ["pre", "net", "post"]
    assert plan["p99_ms"] <= 60 and plan["attainment"] >= 0.99
    assert set(result["homogeneous"]) == {"cpu1", "cpu2"}
    for h in result["homogeneous"].values():
        assert plan["cost_per_hour"] <= h["cost_per_hour"] + 1e-9
    assert "plan:" in out.stdout and "only cpu1" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--trace", "poisson:rate=1"], "missing seconds"),
    (["--trace", "wave:x=1"], "unknown trace kind"),
    (["--trace", "poisson:rate=1,seconds=1", "--profile-bad"], "p99 >= p50"),
    (["--trace", "poisson:rate=1,seconds=1", "--slo-ms", "0.5"], "no batch size"),
])
def test_bad_input_gets_a_clear_error(tmp_path, args, message):
    good = profile(tmp_path, "p.json")
    bad = profile(tmp_path, "b.json", batches=((1, 5.0, 2.0),))
    prof = bad if "--profile-bad" in args else good
    args = [a for a in args if a != "--profile-bad"]
    if "--slo-ms" not in args:
        args += ["--slo-ms", "50"]
    p = run("simulate", "--profile", prof, *args, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "panicked" not in p.stderr


def test_plan_errors(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "tract"\n')
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    p = run("plan", "--ensemble", tmp_path / "m", "--profiles", profiles, "--trace", "poisson:rate=1,seconds=1",
            "--slo-ms", 10, check=False)
    assert p.returncode != 0 and "no ensemble_scheduling steps" in p.stderr
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "config.pbtxt").write_text(ENSEMBLE)
    p = run("plan", "--ensemble", tmp_path / "pipe", "--profiles", profiles, "--trace", "poisson:rate=1,seconds=1",
            "--slo-ms", 10, check=False)
    assert p.returncode != 0 and 'no profile' in p.stderr and '"pre"' in p.stderr


def test_slo_overlay_scales_on_the_replicas_own_signal():
    """deploy/overlays/slo: a KEDA ScaledObject on the Deployment, AverageValue with
    threshold 1 over the sum of the replicas' `sluice_replicas_needed` (so KEDA's HPA
    computes ceil(sum): the SLO policy's replica count), never below one replica,
    scale-down after the policy's 300-s window; the replicas get the objective through an
    environment variable `sluice serve` reads, and the query is the one the deploy README
    documents."""
    import shutil
    import yaml  # from tests/python/requirements.txt (the deploy tests use it)
    from conftest import ROOT

    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy/overlays/slo")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [o for o in yaml.safe_load_all(out.stdout) if o]
    (so,) = [o for o in objs if o["kind"] == "ScaledObject"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert "replicas" not in dep["spec"]
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert so["spec"]["minReplicaCount"] == 1
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    (trig,) = so["spec"]["triggers"]
    assert trig["metricType"] == "AverageValue" and float(trig["metadata"]["threshold"]) == 1.0
    assert trig["metadata"]["query"] == 'sum(sluice_replicas_needed{namespace="sluice"}) or vector(0)'
    assert f"`{trig['metadata']['query']}`" in (ROOT / "deploy/README.md").read_text()
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["SLUICE_METRICS_SLO_MS"]) > 0
    helptext = run("serve", "--help").stdout
    assert "[env: SLUICE_METRICS_SLO_MS=]" in helptext or "env: SLUICE_METRICS_SLO_MS" in helptext


def _samples(text, name):
    """{labels string: value} of one metric family's samples."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, _, val = line.rpartition(" ")
            out[head[len(name):]] = float(val)
    return out


def _tail_ratio(text, model):
    """p99 / mean of the model's compute-time histogram in /metrics (every version),
    the p99 interpolated inside its bucket as Prometheus' histogram_quantile does; 1
    below 100 requests."""
    cum, total, count = {}, 0.0, 0
    for labels, v in _samples(text, "sluice_inference_compute_duration_seconds_bucket").items():
        if f'model="{model}"' in labels:
            le = re.search(r'le="([^"]+)"', labels).group(1)
            cum[le] = cum.get(le, 0) + v
    for labels, v in _samples(text, "sluice_inference_compute_duration_seconds_sum").items():
        if f'model="{model}"' in labels:
            total += v
    count = cum.pop("+Inf")
    if count < 100:
        return 1.0
    rank, below, lower = 0.99 * count, 0.0, 0.0
    for le, c in sorted((float(k), c) for k, c in cum.items()):
        if c >= rank:
            p99 = lower + (le - lower) * ((rank - below) / (c - below) if c > below else 1.0)
            break
        below, lower = c, le
    return max(p99 / (total / count), 1.0)


def _slo_need(stats, slo_s, arrivals, tick, tail=1.0, queued=0, headroom=0.85):
    """The SLO policy (crates/sluice-autoscale/src/policy/slo.rs) written again from its
    documentation: the profile is the mean run time per batch size, its p99 the mean
    times the compute histogram's tail ratio; the best batch size meeting the objective
    (2 x p99 <= objective) of highest throughput gives the capacity (x headroom, x the
    instances serving) and the slack; the need before rounding up is the largest over
    the envelope's windows of A_w / (capacity x (max(w, tick) + slack)), or the queue's
    drain time within the slack."""
    best = None
    for b in stats["batch_stats"]:
        runs = b["compute_infer"]["count"]
        ns = b["compute_input"]["ns"] + b["compute_infer"]["ns"] + b["compute_output"]["ns"]
        if runs == 0 or ns == 0:
            continue
        run_s = ns / runs / 1e9
        thr = b["batch_size"] / run_s * stats["instances"]
        if 2 * run_s * tail <= slo_s and (best is None or thr > best[1]):
            best = (b["batch_size"], thr, run_s * tail)
    size, thr, run_s = best
    capacity, slack = thr * headroom, slo_s - 2 * run_s
    need = max(a / (capacity * (max(w, tick) + max(slack, 0.0))) for w, a in arrivals.items())
    need = max(need, queued / (thr * max(slack, tick)))
    return need, capacity, size, slack


def test_replicas_needed_gauge_is_the_slo_policy_on_live_measurements():
    """`sluice serve --metrics-slo-ms 500`: after 120 requests to mlp, every scrape is one
    tick of the SLO policy. The exported capacity, batch size and slack are what the
    policy derives from the model's own batch statistics (read from its statistics
    endpoint), its compute-time histogram's tail and its two instances, the envelope
    holds the 120 arrivals in every window, and
    `sluice_replicas_needed` is the policy's need computed again in Python from those
    inputs; a second scrape with no new traffic keeps the envelope (the 600-s history).
    A model that never ran exports nothing, and without the flag there is no signal."""
    import requests
    from conftest import EXAMPLES, Server

    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.25] * 784}]}
    s = Server(EXAMPLES, "--metrics-slo-ms", "500")
    plain = Server(EXAMPLES)
    try:
        for _ in range(120):
            assert requests.post(f"{s.base}/v2/models/mlp/infer", json=body, timeout=30).status_code == 200
        assert requests.post(f"{plain.base}/v2/models/mlp/infer", json=body, timeout=30).status_code == 200
        stats = requests.get(f"{s.base}/v2/models/mlp/stats", timeout=10).json()["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 120
        assert stats["instances"] == 2, stats  # the example's instance_group
        for scrape in range(2):
            text = requests.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).text
            needed = _samples(text, "sluice_replicas_needed")
            assert list(needed) == ['{model="mlp",slo_ms="500"}'], needed  # only the model that ran
            arrivals = {float(re.search(r'window="([^"]+)"', k).group(1)): v
                        for k, v in _samples(text, "sluice_replicas_needed_arrivals").items() if 'model="mlp"' in k}
            assert arrivals == {1.0: 120, 5.0: 120, 30.0: 120, 60.0: 120}, (scrape, arrivals)
            tick = _samples(text, "sluice_replicas_needed_tick_seconds")['{model="mlp",slo_ms="500"}']
            tail = _tail_ratio(text, "mlp")
            assert tail > 1.0  # 120 requests: the histogram's tail counts
            need, capacity, size, slack = _slo_need(stats, 0.5, arrivals, tick, tail)
            got = lambda name: _samples(text, name)['{model="mlp",slo_ms="500"}']  # noqa: E731
            assert got("sluice_replicas_needed_capacity") == pytest.approx(capacity, rel=1e-9)
            assert got("sluice_replicas_needed_batch_size") == size
            assert got("sluice_replicas_needed_slack_seconds") == pytest.approx(slack, rel=1e-9)
            assert needed['{model="mlp",slo_ms="500"}'] == pytest.approx(need, rel=1e-9), (scrape, tick)
            assert 0 < need < 1  # 120 requests need less than one replica
        plain_text = requests.get(f"http://127.0.0.1:{plain.metrics_port}/metrics", timeout=10).text
        assert "sluice_replicas_needed" not in plain_text
    finally:
        s.stop()
        plain.stop()
