#!/usr/bin/env python3
"""`sluice plan` on a 3-stage pipeline (cnn -> wide -> mlp) with two hardware classes
measured by `bench/autoscale_profiles.py` (cpu1: one core, $0.05/h; cpu2: two cores and
two intra-op threads, $0.10/h): the plan's cost vs the cheapest homogeneous plans.

    .venv/bin/python bench/autoscale_plan.py [--rate 300] [--slo-ms 250] [--out bench/out/autoscale]
"""

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "sluice"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "autoscale"))
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--slo-ms", type=float, default=250.0)
    ap.add_argument("--max-replicas", type=int, default=8)
    a = ap.parse_args()
    out = Path(a.out)
    stages = {"stages": [{"name": m, "profiles": [f"profiles/{m}-cpu1.json", f"profiles/{m}-cpu2.json"]}
                         for m in ("cnn", "wide", "mlp")]}
    (out / "stages.json").write_text(json.dumps(stages))
    cmd = [str(BIN), "plan", "--stages", str(out / "stages.json"), "--trace",
           f"poisson:rate={a.rate},seconds={a.seconds}", "--slo-ms", str(a.slo_ms),
           "--max-replicas", str(a.max_replicas), "--compare-homogeneous", "--json", str(out / "plan.json")]
    print("$ " + " ".join(cmd[1:]).replace(str(ROOT) + "/", ""))
    subprocess.run(cmd, check=True)
    r = json.loads((out / "plan.json").read_text())
    best = r["plan"]["cost_per_hour"]
    homo = {c: h["cost_per_hour"] for c, h in r["homogeneous"].items()}
    cheapest = min(homo.values())
    print(f"plan ${best:.3f}/h vs cheapest homogeneous ${cheapest:.3f}/h: {best / cheapest:.2f}x")


if __name__ == "__main__":
    main()
