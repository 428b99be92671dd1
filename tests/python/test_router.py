"""`sluice route` end to end: real `sluice serve` replicas on loopback, each holding a
different subset of a repository (explicit mode), one or two routers in front of them,
and the unmodified tritonclient (HTTP and gRPC) as the client. Outputs are checked
against ONNX Runtime; replicas are SIGKILLed and stalled with execution gates (never
by hoping something is slow)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, GATED_WIDTH, Gate, Server, _STARTED, gated_body, make_gated_model, wait_until
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference
from test_security import pki  # noqa: F401  (the module's PKI fixture)

LISTEN = re.compile(r"(HTTP|gRPC) server listening on [^:\s]+:(\d+)")


class Router:
    """A running `sluice route` in front of `replicas` (conftest `Server`s)."""

    def __init__(self, replicas, *extra, prefix=()):
        args = [*prefix, str(BIN), "route", "--address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                "--poll-ms", "100", "--log", "info"]
        for r in replicas:
            args += ["--replica", f"{r.address}:{r.http_port}/{r.grpc_port}"]
        args += list(extra)
        self.lines, self.ports = [], {}
        self._seen = threading.Event()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _STARTED.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()
        assert self._seen.wait(60) and "HTTP" in self.ports, "router did not start:\n" + self.log()
        self.base = f"http://127.0.0.1:{self.ports['HTTP']}"
        self.http_url = f"127.0.0.1:{self.ports['HTTP']}"
        self.grpc_url = f"127.0.0.1:{self.ports['gRPC']}"

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = LISTEN.search(line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
                if m.group(1) == "HTTP":
                    self._seen.set()
        self._seen.set()

    def log(self):
        return "\n".join(self.lines)

    def state(self):
        return requests.get(f"{self.base}/v2/router/state", timeout=10).json()

    def replica(self, server):
        """The router's view of `server` (unknown and unusable before its first discovery)."""
        unknown = {"usable": False, "models": [], "sent": 0}
        return next((r for r in self.state()["replicas"] if r["id"] == server.http_url), unknown)

    def holds(self, server, model):
        r = self.replica(server)
        return r["usable"] and any(m["name"] == model and m["state"] == "READY" for m in r["models"])

    def wait_usable(self, servers, timeout=30):
        assert wait_until(lambda: all(self.replica(s)["usable"] for s in servers), timeout=timeout), (
            self.state(), self.log())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def cluster():
    """Starts replicas and routers; all are stopped at the end, pass or fail."""
    started = []

    def replica(repository, *args, **kwargs):
        s = Server(repository, *args, **kwargs)
        started.append(s)
        return s

    def router(replicas, *args, prefix=()):
        r = Router(replicas, *args, prefix=prefix)
        started.append(r)
        return r

    yield replica, router
    for p in reversed(started):
        if p.proc.poll() is None:
            p.stop()


def explicit(*models, budget=None):
    args = ["--model-control-mode", "explicit"]
    for m in models:
        args += ["--load-model", m]
    if budget:
        args += ["--model-memory-budget", str(budget)]
    return args


def loaded(server, model):
    index = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return any(e["name"] == model and e.get("state") == "READY" for e in index)


def http_infer(url, name, seed):
    inputs = random_inputs(name, rows=2 if MODELS[name]["batch"] else 1, seed=seed)
    c = httpclient.InferenceServerClient(url=url)
    try:
        ins = []
        for iname, arr in inputs.items():
            i = httpclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
            i.set_data_from_numpy(arr)  # binary tensor extension (tritonclient's default)
            ins.append(i)
        result = c.infer(name, ins)
        for out in MODELS[name]["outputs"]:
            assert_close(result.as_numpy(out), reference(name, inputs)[out], what=f"http {name}/{out}")
    finally:
        c.close()


def grpc_infer(url, name, seed):
    inputs = random_inputs(name, rows=2 if MODELS[name]["batch"] else 1, seed=seed)
    c = grpcclient.InferenceServerClient(url=url)
    try:
        ins = []
        for iname, arr in inputs.items():
            i = grpcclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
            i.set_data_from_numpy(arr)
            ins.append(i)
        outs = [grpcclient.InferRequestedOutput(o) for o in MODELS[name]["outputs"]]
        result = c.infer(name, ins, outputs=outs)
        for out in MODELS[name]["outputs"]:
            assert_close(result.as_numpy(out), reference(name, inputs)[out], what=f"grpc {name}/{out}")
    finally:
        c.close()


SUBSETS = [("mlp", "digits"), ("digits", "cnn"), ("cnn", "mlp")]


def test_every_model_through_one_address_and_unheld_models_get_placed(cluster):
    """Three replicas with different subsets of the example repository (budgets of
    different sizes); tritonclient over HTTP and gRPC reaches every model through the
    router with outputs equal to ONNX Runtime's. `mixed` is held by nobody: the first
    request loads it on the replica the placement names (the most free budget), and
    two routers name the same replica for every model before and after."""
    replica, router = cluster
    budgets = [300 << 20, 900 << 20, 600 << 20]
    servers = [replica(EXAMPLES, *explicit(*subset, budget=b)) for subset, b in zip(SUBSETS, budgets)]
    a = router(servers)
    b = router(list(reversed(servers)))  # discovered in another order
    a.wait_usable(servers)
    b.wait_usable(servers)
    assert requests.get(f"{a.base}/v2/health/ready", timeout=5).status_code == 200
    for s, subset in zip(servers, SUBSETS):
        assert wait_until(lambda: all(a.holds(s, m) for m in subset)), a.state()

    plan_a = requests.get(f"{a.base}/v2/router/placement", timeout=5).json()
    plan_b = requests.get(f"{b.base}/v2/router/placement", timeout=5).json()
    assert plan_a == plan_b, (plan_a, plan_b)
    mixed = next(m for m in plan_a["models"] if m["name"] == "mixed")
    assert mixed["holders"] == []
    target = mixed["first_copy"]
    # The replica with the most free budget (the 900 MiB one) gets the first copy.
    assert target == f"127.0.0.1:{servers[1].http_port}", plan_a

    for seed, name in enumerate(["mlp", "digits", "cnn"]):
        http_infer(a.http_url, name, seed)
        grpc_infer(a.grpc_url, name, seed + 10)
    # Every model was answered by a replica that holds it: nobody loaded anything else.
    for s, subset in zip(servers, SUBSETS):
        for m in ["mlp", "digits", "cnn"]:
            assert loaded(s, m) == (m in subset), (s.http_port, m)

    http_infer(a.http_url, "mixed", 5)  # waits for the load, then answered
    grpc_infer(b.grpc_url, "mixed", 6)  # the other router finds it there (after a poll)
    holders = [s for s in servers if loaded(s, "mixed")]
    assert [f"127.0.0.1:{s.http_port}" for s in holders] == [target]
    assert a.state()["loads"] == 1, a.state()

    # Both routers agree again once they have polled the new state.
    def agree():
        pa = requests.get(f"{a.base}/v2/router/placement", timeout=5).json()
        pb = requests.get(f"{b.base}/v2/router/placement", timeout=5).json()
        return pa == pb and any(m["name"] == "mixed" and m["holders"] == [target] for m in pa["models"])
    assert wait_until(agree), (a.state(), b.state())

    # Router errors and replica errors: an unknown model gets the replica's own 404.
    r = requests.post(f"{a.base}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404 and "error" in r.json(), r.text
    index = requests.post(f"{a.base}/v2/repository/index", json={}, timeout=10).json()
    assert {e["name"] for e in index if e.get("state") == "READY"} == {"mlp", "digits", "cnn", "mixed"}


def gated_replicas(tmp_path, replica, n, name="gated"):
    """`n` replicas of one repository holding a gated model, each with its own gate."""
    repo = tmp_path / "repo"
    gates = []
    servers = []
    for i in range(n):
        d = tmp_path / f"gates{i}"
        if i == 0:
            gates.append(make_gated_model(repo, d, name))
        else:
            d.mkdir()
            os.mkfifo(d / name)
            gates.append(Gate(d / name))
        servers.append(replica(repo, "--test-execution-gates", str(d)))
    return servers, gates


def post_gated(base, timeout=60):
    t0 = time.monotonic()
    r = requests.post(f"{base}/v2/models/gated/infer", json=gated_body(), timeout=timeout)
    return r.status_code, time.monotonic() - t0, (r.json()["outputs"][0]["data"] if r.ok else r.text)


def stats(server, model="gated"):
    return requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]


def in_flight(server, model="gated"):
    from conftest import metric
    return metric(server, "sluice_inference_in_flight", model=model)


def test_a_killed_replica_costs_no_request(tmp_path, cluster):
    """Requests held in a replica's engine (observed there) when it is SIGKILLed are
    retried once on another replica and succeed; requests under load while the router
    detects the death all succeed too; nothing hangs."""
    replica, router = cluster
    servers, gates = gated_replicas(tmp_path, replica, 3)
    victim = servers[0]
    try:
        for g in gates[1:]:
            g.open_for_good()
        r = router(servers, "--hedge", "off")
        r.wait_usable(servers)
        assert wait_until(lambda: all(r.holds(s, "gated") for s in servers))

        results, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                results.append(post_gated(r.base))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        # Some routed requests are now held in the victim's engine or queue.
        assert wait_until(lambda: in_flight(victim) >= 1, timeout=60), r.state()
        held = in_flight(victim)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        # Detection: the router marks it down (failed probe / ejection).
        assert wait_until(lambda: not r.replica(victim)["usable"], timeout=10), r.state()
        done_at_detection = len(results)
        assert wait_until(lambda: len(results) >= done_at_detection + 100, timeout=60)
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a request hangs"
    finally:
        for g in gates:
            g.close()
    bad = [x for x in results if x[0] != 200 or x[2] != [2.0] * GATED_WIDTH]
    assert not bad, bad[:5]
    st = r.state()
    print(f"{held:.0f} held on the victim, {len(results)} requests, {st['retries']} retries, {st['ejections']} ejections")
    assert st["retries"] >= held, st  # every request held there was retried
    assert st["errors"] == 0, st


def run_load(base, stop, threads=4):
    results = []

    def one():
        while not stop.is_set():
            results.append(post_gated(base))

    ts = [threading.Thread(target=one) for _ in range(threads)]
    for t in ts:
        t.start()
    return results, ts


def test_hedging_cuts_the_tail_of_a_stalled_replica(tmp_path, cluster):
    """One of three replicas is stalled: its one engine instance is held by an execution
    gate (a request sent to it directly), so whatever the router sends there waits in
    its queue. With hedging (after 50 ms), every request is answered near the healthy
    replicas' latency, the backups stay within the 5 % budget, and the losers queued on
    the stalled replica are dropped when the router closes their connections: the
    replica never executes them. Without hedging, the requests sent there wait for the
    stall to end."""
    replica, router = cluster
    servers, gates = gated_replicas(tmp_path, replica, 3)
    stalled = servers[0]
    try:
        for g in gates[1:]:
            g.open_for_good()
        hedged = router(servers, "--hedge", "50", "--hedge-max-ratio", "0.05", "--hedge-burst", "3")
        plain = router(servers, "--hedge", "off")
        for rt in (hedged, plain):
            rt.wait_usable(servers)
            assert wait_until(lambda: all(rt.holds(s, "gated") for s in servers))

        # Healthy baseline: the same load straight to a healthy replica.
        stop = threading.Event()
        base, ts = run_load(servers[1].base, stop)
        assert wait_until(lambda: len(base) >= 200, timeout=60)
        stop.set()
        [t.join(60) for t in ts]
        healthy_p99 = np.percentile([x[1] for x in base], 99)

        # Stall: one request holds the stalled replica's engine.
        direct = threading.Thread(target=lambda: post_gated(stalled.base, timeout=120))
        direct.start()
        assert wait_until(lambda: in_flight(stalled) == 1, timeout=30)

        stop = threading.Event()
        results, ts = run_load(hedged.base, stop)
        sent_there = lambda: hedged.replica(stalled)["sent"]  # noqa: E731
        assert wait_until(lambda: sent_there() >= 1, timeout=60), hedged.state()
        n = len(results)
        assert wait_until(lambda: len(results) >= n + 200, timeout=60)
        stop.set()
        [t.join(60) for t in ts]
        st = hedged.state()
        lat = [x[1] for x in results]
        assert all(x[0] == 200 for x in results), [x for x in results if x[0] != 200][:3]
        assert st["hedges"] >= 1 and st["hedge_wins"] >= 1, st
        assert st["hedges"] <= 3 + 0.05 * st["requests"], st
        hedged_p99, hedged_max = np.percentile(lat, 99), max(lat)
        # Near the healthy p99: at most the hedge delay plus slack for a shared machine.
        assert hedged_p99 <= healthy_p99 + 0.05 + 0.5, (hedged_p99, healthy_p99)
        assert hedged_max < 2.0, hedged_max
        # The losers were dropped from the stalled replica's queue without running.
        assert wait_until(lambda: in_flight(stalled) == 1, timeout=30), in_flight(stalled)
        assert sent_there() >= 1

        # Without hedging, what goes to the stalled replica waits for it.
        stop = threading.Event()
        slow, ts = run_load(plain.base, stop)
        assert wait_until(lambda: plain.replica(stalled)["sent"] >= 1 and in_flight(stalled) >= 2, timeout=60), (
            plain.state())
        hold = 3.0
        time.sleep(hold)
        stop.set()
        executions_before = stats(stalled)["execution_count"]
        assert executions_before == 0, stats(stalled)  # only the direct one is in the engine
        gates[0].release(1)  # the direct request's run
        assert wait_until(lambda: stats(stalled)["execution_count"] == 1, timeout=30)
        gates[0].open_for_good()
        [t.join(60) for t in ts]
        direct.join(60)
    finally:
        for g in gates:
            g.open_for_good()
            g.close()
    plain_max = max(x[1] for x in slow)
    print(f"healthy p99 {healthy_p99 * 1e3:.1f} ms; hedged p99 {hedged_p99 * 1e3:.1f} ms max {hedged_max * 1e3:.1f} ms "
          f"({st['hedges']} hedges, {st['hedge_wins']} won, {st['requests']} requests, {sent_there()} sent to the "
          f"stalled replica); unhedged max {plain_max * 1e3:.0f} ms ({plain.replica(stalled)['sent']} sent there)")
    assert all(x[0] == 200 for x in slow)
    assert plain_max >= hold, plain_max
    assert plain_max > 2 * hedged_max, (plain_max, hedged_max)
    # Stalled replica: the direct run plus the routed requests of the unhedged phase;
    # none of the hedge losers ran.
    executed = stats(stalled)["execution_count"]
    assert executed == 1 + plain.replica(stalled)["sent"], (executed, plain.state())


def test_a_hedge_answers_from_the_other_replica_and_its_duplicate_never_runs(tmp_path, cluster):
    """Two replicas, each engine held by an execution gate with one request sent to it
    directly. A request through the router waits queued on one of them; after the hedge
    delay a backup goes to the other (the router's state names it). Releasing only that
    replica answers the request from the backup; the router then drops the first attempt,
    whose replica takes it out of its queue: when its own blocker is released, it has
    executed exactly that one run. Nothing here depends on timing: every step waits for
    the state it needs."""
    replica, router = cluster
    servers, gates = gated_replicas(tmp_path, replica, 2)
    blockers = []
    try:
        r = router(servers, "--hedge", "50", "--hedge-burst", "3")
        r.wait_usable(servers)
        assert wait_until(lambda: all(r.holds(s, "gated") for s in servers))
        for s in servers:
            t = threading.Thread(target=lambda s=s: blockers.append(post_gated(s.base, timeout=120)))
            t.start()
            assert wait_until(lambda s=s: in_flight(s) == 1, timeout=30)

        result = []
        client = threading.Thread(target=lambda: result.append(post_gated(r.base, timeout=120)))
        client.start()
        assert wait_until(lambda: r.state()["hedges"] == 1, timeout=60), r.state()
        by_id = {x["id"]: x for x in r.state()["replicas"]}
        ids = [f"127.0.0.1:{s.http_port}" for s in servers]
        (backup,) = [i for i, x in enumerate(ids) if by_id[x]["hedged_to"] == 1]
        first = 1 - backup
        assert by_id[ids[first]]["sent"] == 1 and by_id[ids[backup]]["sent"] == 1, by_id
        assert wait_until(lambda: in_flight(servers[first]) == 2 and in_flight(servers[backup]) == 2, timeout=30)

        gates[backup].release(2)  # its blocker, then the backup request
        client.join(60)
        assert not client.is_alive(), "the routed request hangs"
        assert result[0][0] == 200 and result[0][2] == [2.0] * GATED_WIDTH, result
        st = r.state()
        assert (st["hedges"], st["hedge_wins"], st["errors"]) == (1, 1, 0), st
        # The first attempt's connection was closed: its replica dropped it unrun.
        assert wait_until(lambda: in_flight(servers[first]) == 1, timeout=30), in_flight(servers[first])
        gates[first].release(1)
        assert wait_until(lambda: in_flight(servers[first]) == 0, timeout=30)
        assert stats(servers[first])["execution_count"] == 1, stats(servers[first])
        assert stats(servers[backup])["execution_count"] == 2, stats(servers[backup])
    finally:
        for g in gates:
            g.open_for_good()
            g.close()
    assert wait_until(lambda: len(blockers) == 2, timeout=60)
    assert all(b[0] == 200 for b in blockers), blockers


def test_statistics_through_the_router_add_up_over_the_replicas(cluster):
    """Triton's statistics through the router are the fleet's: 3 requests answered by one
    replica and 5 by the other read as 8 through the router (HTTP per model, per version
    and for all models, and gRPC with tritonclient), every count and time the sum of the
    replicas' own; a model nobody knows gets a replica's own error."""
    replica, router = cluster
    servers = [replica(EXAMPLES), replica(EXAMPLES)]
    r = router(servers, "--hedge", "off")
    r.wait_usable(servers)
    assert wait_until(lambda: all(r.holds(s, "mlp") for s in servers))
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
    for s, n in zip(servers, (3, 5)):
        for _ in range(n):
            assert requests.post(f"{s.base}/v2/models/mlp/infer", json=body, timeout=30).status_code == 200
    own = [requests.get(f"{s.base}/v2/models/mlp/stats", timeout=10).json()["model_stats"][0] for s in servers]

    def total(*path):
        def get(row):
            for k in path:
                row = row[k]
            return row
        return sum(get(o) for o in own)

    for url in (f"{r.base}/v2/models/mlp/stats", f"{r.base}/v2/models/mlp/versions/1/stats"):
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200, resp.text
        (m,) = resp.json()["model_stats"]
        assert (m["name"], m["version"]) == ("mlp", "1")
        assert m["inference_count"] == total("inference_count") == 8
        assert m["execution_count"] == total("execution_count")
        for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            assert m["inference_stats"][k] == {"count": total("inference_stats", k, "count"),
                                               "ns": total("inference_stats", k, "ns")}, k
        assert m["inference_stats"]["success"]["count"] == 8
        assert m["last_inference"] == max(o["last_inference"] for o in own)
        runs = {b["batch_size"]: b["compute_infer"]["count"] for b in m["batch_stats"]}
        assert sum(runs.values()) == total("execution_count")
    everything = requests.get(f"{r.base}/v2/models/stats", timeout=10).json()["model_stats"]
    names = [(x["name"], x["version"]) for x in everything]
    assert len(names) == len(set(names)), names  # one row per model and version
    assert next(x for x in everything if x["name"] == "mlp")["inference_count"] == 8

    c = grpcclient.InferenceServerClient(url=r.grpc_url)
    try:
        g = c.get_inference_statistics("mlp", as_json=True)["model_stats"]
        assert len(g) == 1 and int(g[0]["inference_count"]) == 8, g
        assert int(g[0]["inference_stats"]["success"]["count"]) == 8
        assert int(g[0]["inference_stats"]["compute_infer"]["ns"]) == total("inference_stats", "compute_infer", "ns")
    finally:
        c.close()

    unknown = requests.get(f"{r.base}/v2/models/nope/stats", timeout=10)
    direct = requests.get(f"{servers[0].base}/v2/models/nope/stats", timeout=10)
    assert unknown.status_code == direct.status_code >= 400 and unknown.json() == direct.json(), unknown.text


def test_tls_to_the_replicas_with_mutual_tls_and_a_server_name(pki, cluster):
    """Replicas that serve TLS only and require a client certificate (mutual TLS): a
    router given the CA and a client certificate reaches them over HTTPS (polls,
    forwarding, a placement load) and gRPC over TLS, with outputs equal to ONNX
    Runtime's, and so does one that checks their certificates for a configured name; a
    router without a client certificate, or checking for a name the certificates do not
    carry, never finds them usable and logs why. Bad TLS flags are refused at start."""
    replica, router = cluster
    cert, key = pki["server"]
    ccert, ckey = pki["client"]
    ca = str(pki["ca"])
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", ca]
    servers = [replica(EXAMPLES, *tls, *explicit("mlp", "digits")), replica(EXAMPLES, *tls, *explicit("mlp"))]
    client = ["--replica-tls-ca", ca, "--replica-tls-cert", str(ccert), "--replica-tls-key", str(ckey)]
    ok = router(servers, "--hedge", "off", *client)
    named = router(servers, "--hedge", "off", *client, "--replica-tls-server-name", "localhost")
    no_cert = router(servers, "--hedge", "off", "--replica-tls-ca", ca)
    wrong = router(servers, "--hedge", "off", *client, "--replica-tls-server-name", "other.example")
    for rt in (ok, named):
        rt.wait_usable(servers)
        assert wait_until(lambda: all(rt.holds(s, "mlp") for s in servers)), rt.state()
    for seed in range(4):
        http_infer(ok.http_url, "mlp", seed)
        grpc_infer(ok.grpc_url, "mlp", seed + 10)
    http_infer(named.http_url, "digits", 1)
    grpc_infer(named.grpc_url, "mlp", 2)
    # `cnn` is held by nobody: the router loads it on a replica over HTTPS first.
    http_infer(ok.http_url, "cnn", 3)
    assert ok.state()["loads"] == 1, ok.state()
    assert sum(ok.replica(s)["sent"] for s in servers) >= 9, ok.state()

    # Refused handshakes: each replica is marked down with the TLS reason, never used.
    for rt, why in ((no_cert, "CertificateRequired"), (wrong, "not valid for name")):
        for s in servers:
            assert wait_until(lambda: any("replica down" in line and s.http_url in line and why in line
                                          for line in rt.lines), timeout=30), rt.log()
            assert not rt.replica(s)["usable"], rt.state()
        r = requests.post(f"{rt.base}/v2/models/mlp/infer", json={"inputs": []}, timeout=30)
        assert r.status_code == 503 and "mlp" in r.json()["error"], r.text

    for args, why in [
        (["--replica-tls-cert", str(ccert), "--replica-tls-key", str(ckey)], "--replica-tls-ca"),
        (["--replica-tls-ca", ca, "--replica-tls-cert", str(ccert)], "--replica-tls-key"),
        (["--replica-tls-ca", str(pki["dir"] / "missing.pem")], "missing.pem"),
        (["--replica-tls-ca", ca, "--replica-tls-cert", str(ccert), "--replica-tls-key", str(key)], "usable pair"),
        (["--replica-tls-server-name", "localhost"], "--replica-tls-ca"),
        (["--hedge", "p100"], "percentile"),
    ]:
        p = subprocess.run([str(BIN), "route", "--replica", "127.0.0.1:1", "--http-port", "0", "--grpc-port", "0",
                            *args], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and why in p.stderr, (args, p.returncode, p.stderr)


def free_port_on(*hosts, avoid=()):
    """A TCP port free on every one of `hosts` (loopback addresses) at this moment."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port in avoid:
            continue
        try:
            for h in hosts[1:]:
                with socket.socket() as t:
                    t.bind((h, port))
            return port
        except OSError:
            continue
    raise AssertionError(f"no port free on all of {hosts}")


def test_dns_discovery_follows_every_address_the_name_resolves_to(cluster):
    """Discovery by DNS, as with a Kubernetes headless Service, through the system
    resolver: the router runs in its own user and mount namespaces (`unshare`) where
    /etc/hosts is the test's file, so `replicas.test` resolves to what the test writes
    there. Three replicas listen on 127.0.0.2-4, all on the same ports. The router uses
    every address the name has; when the file changes, replicas leave and join the view
    at the next refresh and traffic follows; when the name stops resolving, the last set
    is kept and still served."""
    replica, router = cluster
    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    http_port = free_port_on(*addrs)
    grpc_port = free_port_on(*addrs, avoid=(http_port,))
    servers = [replica(EXAMPLES, address=a, http_port=http_port, grpc_port=grpc_port) for a in addrs]
    hosts = Path(tempfile.mkdtemp(prefix="sluice-hosts-")) / "hosts"

    def resolve_to(*ips):
        # Written in place: the bind mount shows this very file (a rename would not be seen).
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{ip} replicas.test\n" for ip in ips))

    resolve_to("127.0.0.2", "127.0.0.3")
    shim = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    r = router([], "--replica-dns", "replicas.test", "--replica-http-port", str(http_port),
               "--replica-grpc-port", str(grpc_port), "--dns-refresh-secs", "0.2", "--hedge", "off", prefix=shim)

    def view():
        return sorted((x["id"], x["usable"]) for x in r.state()["replicas"])

    def expect(*ips):
        want = sorted((f"{ip}:{http_port}", True) for ip in ips)
        assert wait_until(lambda: view() == want, timeout=30), (view(), want, r.log())

    def success(s):
        return stats(s, "mlp")["inference_stats"]["success"]["count"]

    try:
        expect("127.0.0.2", "127.0.0.3")
        for seed in range(4):
            http_infer(r.http_url, "mlp", seed)
            grpc_infer(r.grpc_url, "mlp", seed + 10)
        assert success(servers[0]) + success(servers[1]) == 8 and success(servers[2]) == 0

        resolve_to("127.0.0.3", "127.0.0.4")
        expect("127.0.0.3", "127.0.0.4")
        resolve_to("127.0.0.4")
        expect("127.0.0.4")
        before = [success(s) for s in servers]
        for seed in range(5):
            http_infer(r.http_url, "mlp", seed)
            grpc_infer(r.grpc_url, "mlp", seed + 10)
        assert [success(s) - b for s, b in zip(servers, before)] == [0, 0, 10]

        # The name no longer resolves: the router keeps the set it has and says why.
        resolve_to()
        assert wait_until(lambda: any("replica discovery failed" in line for line in r.lines), timeout=30), r.log()
        expect("127.0.0.4")
        http_infer(r.http_url, "mlp", 99)
        assert success(servers[2]) == before[2] + 11
    finally:
        shutil.rmtree(hosts.parent, ignore_errors=True)
