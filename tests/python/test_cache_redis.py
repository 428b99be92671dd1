"""The Redis response cache end to end (`--cache-config redis,host=..,port=..`), with
Debian's real `redis-server` started here on a free loopback port (`--save ""
--appendonly no`) and stopped by PID: hits equal the uncached answer and ONNX Runtime's
for every example model; two Sluice replicas share entries (a miss on A, then a hit on
B, by execution counts); entries carry their TTL; Redis paused or stopped mid-run costs
zero failed requests and counts an outage, and hits come back with it; `requirepass`
from the flag or the environment; a wrong or missing password and an unreachable Redis
are clear start-up errors that never echo the password; single-flight per replica;
TLS (`tls_enabled=true`) to a `redis-server --tls-port` with a CA made here, with and
without client certificates, and a wrong CA or a missing client certificate as clear
start-up errors."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from conftest import BIN, EXAMPLES, GATED_WIDTH, gated_body, make_gated_model, metric, wait_until
from models import MODELS, assert_close, random_inputs, reference
from test_cache import cached_repository, enable_cache, infer, make_identity, stats
from test_security import issue, openssl

# scripts/test.sh installs Debian's redis-server and sets this: missing Redis fails.
REQUIRE = os.environ.get("SLUICE_REQUIRE_REDIS") == "1"
REDIS = shutil.which("redis-server")
PASSWORD = "s3cret-Pa55"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A real redis-server on 127.0.0.1, no persistence; restartable on its port."""

    def __init__(self, tmp_path, password=None, tls=None):
        if REDIS is None:
            if REQUIRE:
                pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's redis-server)")
            pytest.skip("redis-server is not installed")
        self.dir, self.password, self.port, self.proc = tmp_path, password, free_port(), None
        # tls: {"ca", "cert", "key", "auth_clients"}: TLS only (--port 0 --tls-port).
        self.tls = tls
        self.start()

    def start(self):
        args = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls["cert"]), "--tls-key-file", str(self.tls["key"]),
                     "--tls-ca-cert-file", str(self.tls["ca"]),
                     "--tls-auth-clients", "yes" if self.tls["auth_clients"] else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: self.ping(), timeout=20), "redis-server did not start"

    def cli(self, *args):
        cmd = ["redis-cli", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            cmd += ["-a", self.password]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10).stdout.strip()

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if self.tls:
                    ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
                    if self.tls["auth_clients"]:
                        ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
                    s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def flag(self, *extra):
        keys = [f"redis,host=127.0.0.1,port={self.port}"] + [f"redis,{e}" for e in extra]
        out = []
        for k in keys:
            out += ["--cache-config", k]
        return out


@pytest.fixture
def redis_factory(tmp_path):
    started = []

    def start(password=None, tls=None):
        d = tmp_path / f"redis{len(started)}"
        d.mkdir()
        r = Redis(d, password, tls)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc and r.proc.poll() is None:
            r.proc.send_signal(signal.SIGCONT)
        r.stop()


def test_replicas_share_entries_and_hits_equal_the_uncached_answer(redis_factory, start_server, tmp_path, monkeypatch):
    redis = redis_factory(password=PASSWORD)
    root = cached_repository(tmp_path / "r")
    # A gets the password in the flag, B from the environment (as from a Secret).
    a = start_server(root, *redis.flag(f"password={PASSWORD}", "ttl=300"))
    monkeypatch.setenv("SLUICE_CACHE_REDIS_PASSWORD", PASSWORD)
    b = start_server(root, *redis.flag("ttl=300"))
    monkeypatch.delenv("SLUICE_CACHE_REDIS_PASSWORD")
    assert PASSWORD not in a.log() and PASSWORD not in b.log()
    for n, model in enumerate(MODELS):
        for p, protocol in enumerate(["http-json", "http-binary", "grpc"]):
            inputs = random_inputs(model, seed=500 + 10 * n + p)
            a0, b0 = stats(a, model), stats(b, model)
            uncached = infer(a, protocol, model, inputs, cache="skip")
            miss = infer(a, protocol, model, inputs)            # runs on A, stored in Redis
            hit = infer(b, protocol, model, inputs)             # answered on B from Redis
            a1, b1 = stats(a, model), stats(b, model)
            expected = reference(model, inputs)
            for name in MODELS[model]["outputs"]:
                assert np.array_equal(miss[name], uncached[name]), (model, name)
                assert np.array_equal(hit[name], uncached[name]), (model, name)
                assert hit[name].dtype == uncached[name].dtype
                assert_close(hit[name], expected[name], what=f"{model}/{name}")
            assert a1["exec"] - a0["exec"] == 2 and a1["miss"] - a0["miss"] == 1, (model, a0, a1)
            assert b1["exec"] == b0["exec"], f"B ran {model}: the entry was not shared"
            assert b1["hit"] - b0["hit"] == 1 and b1["success"] - b0["success"] == 1
    keys = redis.cli("--scan", "--pattern", "sluice:v1:*").split()
    assert len(keys) == len(MODELS) * 3, keys
    # Every entry carries its TTL (SET ... PX).
    ttl = int(redis.cli("PTTL", keys[0]))
    assert 0 < ttl <= 300_000, ttl
    assert metric(a, "sluice_cache_inserts_total") == len(MODELS) * 3
    assert metric(b, "sluice_cache_hits_total") == len(MODELS) * 3
    assert metric(a, "sluice_cache_errors_total") == 0 and metric(a, "sluice_cache_outages_total") == 0
    # The local cache's gauges mean nothing for Redis and are not written.
    assert "sluice_cache_budget_bytes" not in requests.get(
        f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=10).text


def test_a_changed_model_file_never_meets_another_replicas_entries(redis_factory, start_server, tmp_path):
    """Replicas share entries only when they serve the same files: the key holds a
    digest of the version's files and config, not a process-local generation."""
    redis = redis_factory()
    one, two = tmp_path / "one", tmp_path / "two"
    make_identity(one)
    make_identity(two)
    # The same name, version and signature with another file: y = x + x.
    two_nodes = [helper.make_node("Add", ["x", "x"], ["y"])]
    graph = helper.make_graph(two_nodes, "ident",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(two / "ident" / "1" / "model.onnx"))
    a = start_server(one, *redis.flag())
    b = start_server(two, *redis.flag())
    x = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert np.array_equal(infer(a, "http-binary", "ident", x, outputs=["y"])["y"], x["x"])
    got = infer(b, "http-binary", "ident", x, outputs=["y"])["y"]
    assert np.array_equal(got, 2 * x["x"]), "B answered from A's entry of another model file"
    assert stats(b, "ident")["hit"] == 0 and stats(b, "ident")["exec"] == 1


def test_redis_paused_or_stopped_fails_no_request_and_hits_return(redis_factory, start_server, tmp_path):
    redis = redis_factory()
    root = cached_repository(tmp_path / "r", ["mlp"])
    s = start_server(root, *redis.flag("socket_timeout=100"))
    url = f"{s.base}/v2/models/mlp/infer"
    rng = np.random.default_rng(9)
    hot = rng.standard_normal(784).astype(np.float32)
    expected = reference("mlp", {"input": hot[None]})["probabilities"]

    def post(x):
        r = requests.post(url, json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                  "data": x.tolist()}]}, timeout=30)
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"][0]["data"], dtype=np.float32)

    def hits():
        return stats(s, "mlp")["hit"]

    post(hot)
    post(hot)
    assert hits() == 1
    # 1. Paused (a Redis that stops answering): lookups time out; every request
    # succeeds with the model's own answer.
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(12):
            x = hot if i % 2 else rng.standard_normal(784).astype(np.float32)
            want = expected if i % 2 else reference("mlp", {"input": x[None]})["probabilities"]
            assert_close(post(x)[None], want, what=f"request {i} while Redis is paused")
        assert metric(s, "sluice_cache_outages_total") == 1
        assert metric(s, "sluice_cache_errors_total") >= 1
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: (post(hot) is not None) and hits() >= 2, timeout=30), s.log()[-2000:]
    # 2. Stopped mid-run: zero failed requests, one more outage, logged once.
    redis.stop()
    before = hits()
    for i in range(20):
        assert_close(post(hot)[None], expected, what=f"request {i} during the outage")
    assert hits() == before, "nothing can hit while Redis is down"
    assert metric(s, "sluice_cache_outages_total") == 2
    # 3. Back (empty, as it keeps nothing): the next identical requests store and hit.
    redis.start()
    assert wait_until(lambda: (post(hot) is not None) and hits() > before, timeout=30), s.log()[-2000:]
    assert metric(s, "sluice_cache_outages_total") == 2
    log = s.log()
    assert log.count("Redis is unavailable") == 2, log[-3000:]
    assert log.count("Redis is back") == 2, log[-3000:]
    assert stats(s, "mlp")["success"] == stats(s, "mlp")["hit"] + stats(s, "mlp")["exec"]


def serve_fails(*args, env=None):
    run = subprocess.run([str(BIN), "serve", "--model-repository", str(EXAMPLES), "--http-port", "0",
                          "--grpc-port", "0", "--metrics-port", "0", *args],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode != 0, run.stderr
    return run.stderr


def test_wrong_or_missing_password_and_no_redis_fail_at_start(redis_factory):
    redis = redis_factory(password=PASSWORD)
    wrong = "not-the-Pa55word"
    err = serve_fails(*redis.flag(f"password={wrong}"))
    assert "cannot authenticate" in err and "password given was refused" in err, err
    assert wrong not in err, "the password is echoed"
    env = dict(os.environ, SLUICE_CACHE_REDIS_PASSWORD=wrong)
    err = serve_fails(*redis.flag(), env=env)
    assert "cannot authenticate" in err and wrong not in err, err
    err = serve_fails(*redis.flag())
    assert "requires a password" in err and "SLUICE_CACHE_REDIS_PASSWORD" in err, err
    nobody = free_port()
    err = serve_fails("--cache-config", f"redis,host=127.0.0.1,port={nobody},connect_timeout=500")
    assert "cannot reach Redis at 127.0.0.1:" in err, err
    for bad in ["redis,port=1", "redis,host=h,tls_enabled=maybe", "redis,host=h,cacert=/ca.pem",
                "redis,host=h,socket_timeout=0", "redis,host=h,pool_size=0"]:
        assert "--cache-config" in serve_fails("--cache-config", bad)


def test_single_flight_per_replica_with_redis(redis_factory, start_server, tmp_path):
    redis = redis_factory(password=PASSWORD)
    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "held")
    enable_cache(tmp_path / "held")
    s = start_server(tmp_path, *redis.flag(f"password={PASSWORD}"), "--test-execution-gates", str(gates))
    url = f"{s.base}/v2/models/held/infer"
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(requests.post, url, json=gated_body(4.0), timeout=60) for _ in range(8)]
            assert wait_until(lambda: metric(s, "sluice_cache_pending") == 8
                              and metric(s, "sluice_inference_in_flight", model="held") == 1,
                              timeout=60), s.log()[-3000:]
            gate.release(1)
            answers = [f.result() for f in futures]
    finally:
        gate.open_for_good()
        gate.close()
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert all(r.json()["outputs"][0]["data"] == [5.0] * GATED_WIDTH for r in answers)
    st = stats(s, "held")
    assert st["exec"] == 1 and st["miss"] == 1 and st["hit"] == 7
    assert len(redis.cli("--scan", "--pattern", "sluice:v1:*").split()) == 1


def make_pki(d):
    """A CA with a Redis server certificate (127.0.0.1, localhost) and a client
    certificate, and a second CA that signed neither."""
    d.mkdir()
    for ca in ("ca", "other"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=redis-test-{ca}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    server, server_key = issue(d, "server", "redis", "serverAuth")
    client, client_key = issue(d, "client", "sluice", "clientAuth")
    cas = d / "cas"
    cas.mkdir()
    shutil.copy(d / "ca.pem", cas / "ca.pem")
    (cas / "README").write_text("not a certificate\n")
    return {"ca": d / "ca.pem", "other": d / "other.pem", "cas": cas, "cert": server, "key": server_key,
            "client_cert": client, "client_key": client_key}


def test_tls_to_redis_with_a_generated_ca_and_client_certificates(redis_factory, start_server, tmp_path):
    pki = make_pki(tmp_path / "pki")
    root = cached_repository(tmp_path / "r", ["mlp"])
    inputs = random_inputs("mlp", seed=77)
    expected = reference("mlp", inputs)["probabilities"]
    # 1. Server authentication only: Triton's keys on A, Sluice's `tls` and a CA folder on B.
    # A generous socket_timeout: a connection is made (and its TLS handshake done) by its
    # first lookup, which a saturated machine could push past the 100 ms default (a miss).
    slow = "socket_timeout=10000"
    plain = redis_factory(tls=dict(pki, auth_clients=False))
    a = start_server(root, *plain.flag("tls_enabled=true", f"cacert={pki['ca']}", slow))
    b = start_server(root, *plain.flag("tls=true", f"cert_dir={pki['cas']}", slow))
    assert "tls=true" in a.log(), a.log()[-2000:]
    miss = infer(a, "http-binary", "mlp", inputs)
    hit = infer(b, "http-binary", "mlp", inputs)
    assert np.array_equal(hit["probabilities"], miss["probabilities"])
    assert_close(hit["probabilities"], expected, what="hit over TLS")
    assert stats(a, "mlp")["exec"] == 1 and stats(b, "mlp")["exec"] == 0 and stats(b, "mlp")["hit"] == 1
    assert metric(a, "sluice_cache_errors_total") == 0 and metric(b, "sluice_cache_errors_total") == 0
    # A CA that did not sign Redis's certificate: a clear start-up error, not an outage.
    err = serve_fails(*plain.flag("tls_enabled=true", f"cacert={pki['other']}"))
    assert "TLS with Redis at 127.0.0.1:" in err and "cacert" in err, err
    # Plain TCP to a TLS-only Redis never gets an answer: refused at start within the timeout.
    err = serve_fails(*plain.flag("connect_timeout=500"))
    assert "--cache-config redis" in err, err
    # 2. Redis asks for a client certificate (`tls-auth-clients yes`).
    mutual = redis_factory(tls=dict(pki, auth_clients=True))
    err = serve_fails(*mutual.flag("tls_enabled=true", f"cacert={pki['ca']}"))
    assert "TLS with Redis at 127.0.0.1:" in err or "refused the connection" in err, err
    c = start_server(root, *mutual.flag("tls_enabled=true", f"cacert={pki['ca']}", slow,
                                        f"cert={pki['client_cert']}", f"key={pki['client_key']}"))
    first = infer(c, "http-binary", "mlp", inputs)
    again = infer(c, "http-json", "mlp", inputs)
    # The hit is c's own answer exactly; c computed it itself (another Redis), and its
    # tract may have picked another batch plan than a's (timed at load): close to a's.
    assert np.array_equal(again["probabilities"], first["probabilities"])
    assert_close(again["probabilities"], miss["probabilities"], what="c's answer against a's")
    assert stats(c, "mlp")["exec"] == 1 and stats(c, "mlp")["hit"] == 1
    # Files that are missing or not PEM: errors that name the key, at start.
    err = serve_fails(*mutual.flag("tls=true", f"cacert={tmp_path / 'nope.pem'}"))
    assert "cannot read cacert" in err, err
    err = serve_fails(*mutual.flag("tls=true", f"cert_dir={root}"))
    assert "holds no PEM certificate" in err, err


def test_connections_are_open_before_the_server_is_ready(redis_factory, start_server, tmp_path):
    """The pool's connections are made (and checked with a PING) at start, before the
    ready file is written: the first lookups do not pay the handshakes inside their
    socket_timeout (with TLS that handshake could exceed the 100 ms default)."""
    redis = redis_factory()
    root = cached_repository(tmp_path / "r", ["mlp"])
    server = start_server(root, *redis.flag("pool=3"))
    # Before any request: three connections of the pool whose last command was PING
    # (the start-up check's own connection is closed; redis-cli's is `client|list`).
    clients = [line for line in redis.cli("CLIENT", "LIST").splitlines() if "cmd=ping" in line]
    assert len(clients) >= 3, redis.cli("CLIENT", "LIST")
    assert stats(server, "mlp")["exec"] == 0
    inputs = random_inputs("mlp", seed=91)
    miss = infer(server, "http-binary", "mlp", inputs)
    hit = infer(server, "http-binary", "mlp", inputs)
    assert np.array_equal(hit["probabilities"], miss["probabilities"])
    assert stats(server, "mlp")["hit"] == 1 and metric(server, "sluice_cache_errors_total") == 0
