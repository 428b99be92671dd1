#!/usr/bin/env python3
"""Autoscaling policies compared by `sluice simulate` on three traces (diurnal, bursty
MMPP, steps) with a measured profile (default: `wide` on `cpu1` from
`bench/autoscale_profiles.py`). HPA is swept over utilization targets to find the
best-tuned one (fewest replica-seconds at >= 0.99 attainment); the table gives every
policy's attainment, p99, replica-seconds, scaling actions, and Sluice's ratios.

    .venv/bin/python bench/autoscale_policies.py [--profile P] [--slo-ms 250] [--out bench/out/autoscale]
"""

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "sluice"


def traces(cap):
    """Rates scaled to one replica's capacity `cap` (requests/s at the best batch)."""
    r = lambda x: round(x * cap, 1)  # noqa: E731
    return {
        "diurnal": f"diurnal:mean={r(4)},amplitude=0.8,period=3600,seconds=3600",
        "bursty": f"mmpp:low={r(1.5)},high={r(6)},dwell_low=120,dwell_high=30,seconds=3600",
        "step": f"step:rates={r(1)}/{r(6)}/{r(1)}/{r(4)}/{r(1)},every=600",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "autoscale"))
    ap.add_argument("--profile", default=None)
    ap.add_argument("--slo-ms", type=float, default=250.0)
    ap.add_argument("--max-replicas", type=int, default=40)
    a = ap.parse_args()
    out = Path(a.out)
    prof_path = Path(a.profile or out / "profiles" / "wide-cpu1.json")
    prof = json.loads(prof_path.read_text())
    # best batch within the objective (the same rule as the crate: 2 x p99 <= slo)
    ok = [b for b in prof["batches"] if 2 * b["latency_ms"].get("p99", b["latency_ms"]["p50"]) <= a.slo_ms]
    best = max(ok, key=lambda b: b["batch_size"] / b["latency_ms"]["mean"])
    cap = best["batch_size"] / best["latency_ms"]["mean"] * 1e3
    bounds = {"min_replicas": 1, "max_replicas": a.max_replicas}
    policies = [{"name": f"hpa-util-{t}", "kind": "hpa", **bounds, "metric": {"type": "utilization", "target": t / 100}}
                for t in (30, 40, 50, 60, 70, 80, 90)]
    b = best["batch_size"]
    policies += [
        {"name": "keda-rps", "kind": "keda", "min_replica_count": 1,
         "hpa": {**bounds, "metric": {"type": "requests_per_second", "target": round(0.7 * cap, 1)}}},
        {"name": "kpa", "kind": "kpa", **bounds, "target": b},
        {"name": "ray", "kind": "ray", **bounds, "target_ongoing_requests": b},
        {"name": "infaas", "kind": "infaas", **bounds},
        {"name": "sluice-slo", "kind": "slo", **bounds},
    ]
    cfg = out / "policies-config.json"
    cfg.write_text(json.dumps({"slo_ms": a.slo_ms, "max_batch": b, "bucket_s": 30, "policies": policies}))
    print(f"profile {prof['model']} on {prof['hardware_class']}: batch {b}, {cap:.0f} req/s per replica; "
          f"objective {a.slo_ms} ms; load time {prof['load_time_s']} s")
    for name, spec in traces(cap).items():
        cmd = [str(BIN), "simulate", "--profile", str(prof_path), "--trace", spec, "--config", str(cfg),
               "--json", str(out / f"sim-{name}.json"), "--plot", str(out / f"sim-{name}.svg")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rep = json.loads((out / f"sim-{name}.json").read_text())
        ps = {p["policy"]: p for p in rep["policies"]}
        print(f"\n### {name}: `{spec}` ({rep['trace_requests']} requests)\n")
        print("| policy | attainment | p99 ms | replica-s | actions |\n|---|---|---|---|---|")
        for p in rep["policies"]:
            print(f"| {p['policy']} | {p['attainment']:.4f} | {p['p99_ms']:.1f} | {p['replica_seconds']:.0f} | "
                  f"{p['scaling_actions']} |")
        s = ps["sluice-slo"]
        hpas = [p for n, p in ps.items() if n.startswith("hpa-") and p["attainment"] >= min(0.99, s["attainment"])]
        if hpas:
            h = min(hpas, key=lambda p: p["replica_seconds"])
            print(f"\nsluice-slo vs best-tuned HPA ({h['policy']}, attainment {h['attainment']:.4f}): "
                  f"replica-seconds {s['replica_seconds'] / h['replica_seconds']:.2f}x; "
                  f"actions {s['scaling_actions']} vs KPA {ps['kpa']['scaling_actions']}")
        else:
            print("\nno HPA target reaches sluice-slo's attainment")


if __name__ == "__main__":
    main()
