"""TLS, mutual TLS, certificate reload, scoped API keys (and Triton's restricted-API
form) and the bounded shutdown, against a real `sluice serve` with real clients
(tritonclient over HTTPS and gRPC/TLS, requests, raw sockets). Certificates come from
a CA each test run makes with the `openssl` CLI."""

import functools
import json
import signal
import socket
import ssl
import subprocess
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import BIN, EXAMPLES, Server, wait_until

MLP = EXAMPLES / "mlp" / "1" / "model.onnx"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(ca_dir, name, cn, usage):
    """A certificate `name`.pem/.key signed by the CA in ca_dir."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=ca_dir)
    ext = ca_dir / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", ext.name,
            cwd=ca_dir)
    return ca_dir / f"{name}.pem", ca_dir / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sluice-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    server = issue(d, "server", "sluice-first", "serverAuth")
    second = issue(d, "second", "sluice-second", "serverAuth")
    client = issue(d, "client", "client", "clientAuth")
    return {"dir": d, "ca": d / "ca.pem", "server": server, "second": second, "client": client}


def reference(x):
    sess = ort.InferenceSession(str(MLP), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def context(ca, cert=None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def peer_cn(port, ca):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            return subject["commonName"]


def http_infer(client, x):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer("mlp", [inp]).as_numpy("probabilities")


def grpc_infer(client, x, headers=None):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp], headers=headers).as_numpy("probabilities")


def test_https_and_grpc_tls_serve_correct_answers_and_plain_http_is_told(pki):
    cert, key = pki["server"]
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key), "--metrics-tls")
    try:
        x = np.random.default_rng(1).standard_normal((3, 784)).astype(np.float32)
        want = reference(x)
        factory = functools.partial(context, pki["ca"])
        http = httpclient.InferenceServerClient(s.http_url, ssl=True, ssl_context_factory=factory)
        assert http.is_server_ready()
        np.testing.assert_allclose(http_infer(http, x), want, rtol=1e-4, atol=1e-5)
        grpc = grpcclient.InferenceServerClient(s.grpc_url, ssl=True,
                                                root_certificates=str(pki["ca"]))
        assert grpc.is_server_ready()
        np.testing.assert_allclose(grpc_infer(grpc, x), want, rtol=1e-4, atol=1e-5)
        # curl, the other everyday client, over HTTP/2 with ALPN.
        out = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(pki["ca"]), "-w",
                              " %{http_version}", f"https://127.0.0.1:{s.http_port}/v2"],
                             capture_output=True, text=True, timeout=30)
        body, version = out.stdout.rsplit(" ", 1)
        assert json.loads(body)["name"] == "sluice" and version == "2", out
        # Metrics over TLS.
        r = requests.get(f"https://127.0.0.1:{s.metrics_port}/metrics", verify=str(pki["ca"]),
                         timeout=10)
        assert r.status_code == 200 and "sluice_" in r.text
        # Plain HTTP to the TLS port: a readable 400, not a hang or garbage.
        r = requests.get(f"http://{s.http_url}/v2/health/live", timeout=10)
        assert r.status_code == 400 and "HTTPS" in r.json()["error"]
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://{s.http_url}/v2/health/live", timeout=10)
        # Plain gRPC to the TLS port fails cleanly, and TLS clients are still served.
        plain = grpcclient.InferenceServerClient(s.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        np.testing.assert_allclose(grpc_infer(grpc, x), want, rtol=1e-4, atol=1e-5)
        assert http.is_server_live()
    finally:
        assert s.stop() == 0, s.log()


def test_triton_grpc_ssl_flags_and_mutual_tls(pki):
    cert, key = pki["server"]
    ccert, ckey = pki["client"]
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key),
               "--tls-client-ca", str(pki["ca"]),
               "--grpc-use-ssl", "true", "--grpc-use-ssl-mutual", "true",
               "--grpc-server-cert", str(cert), "--grpc-server-key", str(key),
               "--grpc-root-cert", str(pki["ca"]))
    try:
        x = np.ones((1, 784), np.float32)
        want = reference(x)
        # HTTPS without a client certificate: refused during or right after the handshake.
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"https://{s.http_url}/v2/health/live", verify=str(pki["ca"]), timeout=10)
        r = requests.get(f"https://{s.http_url}/v2/health/live", verify=str(pki["ca"]),
                         cert=(str(ccert), str(ckey)), timeout=10)
        assert r.status_code == 200
        # A server certificate is not a client certificate (wrong extended key usage).
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"https://{s.http_url}/v2/health/live", verify=str(pki["ca"]),
                         cert=(str(cert), str(key)), timeout=10)
        anonymous = grpcclient.InferenceServerClient(s.grpc_url, ssl=True,
                                                     root_certificates=str(pki["ca"]))
        with pytest.raises(InferenceServerException) as e:
            anonymous.is_server_live(client_timeout=5)
        assert "UNAVAILABLE" in str(e.value.status())
        mutual = grpcclient.InferenceServerClient(
            s.grpc_url, ssl=True, root_certificates=str(pki["ca"]),
            private_key=str(ckey), certificate_chain=str(ccert))
        np.testing.assert_allclose(grpc_infer(mutual, x), want, rtol=1e-4, atol=1e-5)
    finally:
        assert s.stop() == 0, s.log()


def test_sighup_reloads_certificates_without_dropping_connections(pki, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki["server"][0].read_bytes())
    key.write_bytes(pki["server"][1].read_bytes())
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key),
               "--tls-reload-interval-secs", "0")
    try:
        assert peer_cn(s.http_port, pki["ca"]) == "sluice-first"
        assert peer_cn(s.grpc_port, pki["ca"]) == "sluice-first"
        # A keep-alive connection opened before the reload.
        raw = socket.create_connection(("127.0.0.1", s.http_port), timeout=10)
        old = context(pki["ca"]).wrap_socket(raw, server_hostname="127.0.0.1")
        request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        old.sendall(request)
        assert old.recv(4096).startswith(b"HTTP/1.1 200")

        # A broken pair first: the reload fails and the old certificate stays.
        cert.write_bytes(pki["second"][0].read_bytes())
        s.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS reload failed" in s.log(), timeout=10), s.log()
        assert peer_cn(s.http_port, pki["ca"]) == "sluice-first"

        key.write_bytes(pki["second"][1].read_bytes())
        s.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: peer_cn(s.http_port, pki["ca"]) == "sluice-second", timeout=10)
        assert peer_cn(s.grpc_port, pki["ca"]) == "sluice-second"
        # The connection from before still works.
        old.sendall(request)
        assert old.recv(4096).startswith(b"HTTP/1.1 200")
        old.close()
    finally:
        assert s.stop() == 0, s.log()


def test_tls_files_changing_on_disk_are_picked_up(pki, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki["server"][0].read_bytes())
    key.write_bytes(pki["server"][1].read_bytes())
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key),
               "--tls-reload-interval-secs", "0.2")
    try:
        assert peer_cn(s.http_port, pki["ca"]) == "sluice-first"
        key.write_bytes(pki["second"][1].read_bytes())
        cert.write_bytes(pki["second"][0].read_bytes())
        assert wait_until(lambda: peer_cn(s.http_port, pki["ca"]) == "sluice-second", timeout=10)
    finally:
        assert s.stop() == 0, s.log()


def test_bad_tls_setup_is_refused_at_start(pki, tmp_path):
    cert, _ = pki["server"]
    _, other_key = pki["second"]
    for args, message in [
        (["--tls-cert", str(cert)], "--tls-key"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "usable pair"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(other_key)], "missing.pem"),
        (["--grpc-use-ssl", "true"], "gRPC TLS needs"),
    ]:
        out = subprocess.run([str(BIN), "serve",
                              "--model-repository", str(EXAMPLES), "--http-port", "0",
                              "--grpc-port", "0", "--metrics-port", "0", *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


# --- API keys -------------------------------------------------------------------

KEYS = {
    "reader": ("inference,metadata", "reader-0123456789abcdef"),
    "stats": ("statistics", "stats-0123456789abcdef"),
    "admin": ("*", "admin-0123456789abcdef"),
}


def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# name scopes key\n" + "".join(
        f"{name} {scopes} {key}\n" for name, (scopes, key) in KEYS.items()))
    return path


def bearer(name):
    return {"Authorization": f"Bearer {KEYS[name][1]}"}


X = np.zeros((1, 784), np.float32)
INFER_BODY = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                          "data": [0.0] * 784}]}

# One endpoint per category over HTTP: (method, path, body).
HTTP_CALLS = {
    "health": ("GET", "/v2/health/ready", None),
    "metadata": ("GET", "/v2/models/mlp", None),
    "inference": ("POST", "/v2/models/mlp/infer", INFER_BODY),
    "shared-memory": ("GET", "/v2/systemsharedmemory/status", None),
    "model-config": ("GET", "/v2/models/mlp/config", None),
    "model-repository": ("POST", "/v2/repository/index", {}),
    "statistics": ("GET", "/v2/models/stats", None),
    "trace": ("GET", "/v2/trace/setting", None),
    "logging": ("GET", "/v2/logging", None),
}


def grpc_call(client, category, headers):
    calls = {
        "health": lambda: client.is_server_ready(headers=headers),
        "metadata": lambda: client.get_model_metadata("mlp", headers=headers),
        "inference": lambda: grpc_infer(client, X, headers=headers),
        "shared-memory": lambda: client.get_system_shared_memory_status(headers=headers),
        "model-config": lambda: client.get_model_config("mlp", headers=headers),
        "model-repository": lambda: client.get_model_repository_index(headers=headers),
        "statistics": lambda: client.get_inference_statistics(headers=headers),
        "trace": lambda: client.get_trace_settings(headers=headers),
        "logging": lambda: client.get_log_settings(headers=headers),
    }
    try:
        calls[category]()
        return "OK"
    except InferenceServerException as e:
        return str(e.status()).replace("StatusCode.", "")


def http_call(s, category, headers):
    method, path, body = HTTP_CALLS[category]
    r = requests.request(method, s.base + path, json=body, headers=headers, timeout=30)
    return r


def test_every_category_needs_a_key_with_its_scope_over_both_protocols(tmp_path):
    s = Server(EXAMPLES, "--api-keys-file", str(keys_file(tmp_path)))
    try:
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        for category in HTTP_CALLS:
            open_ = category == "health"
            # No key.
            r = http_call(s, category, {})
            if open_:
                assert r.status_code == 200, (category, r.text)
            else:
                assert r.status_code == 401, (category, r.status_code, r.text)
                assert "API key" in r.json()["error"]
                assert r.headers["www-authenticate"].startswith("Bearer")
            g = grpc_call(grpc, category, None)
            assert (g == "OK") if open_ else (g == "UNAUTHENTICATED"), (category, g)
            # A wrong key (right length, last byte differs) is unknown: 401.
            wrong = {"Authorization": "Bearer " + KEYS["admin"][1][:-1] + "X"}
            if not open_:
                assert http_call(s, category, wrong).status_code == 401, category
                assert grpc_call(grpc, category, {"authorization": wrong["Authorization"]}) \
                    == "UNAUTHENTICATED", category
            # Each key: allowed iff it has the scope; a known key without it gets 403.
            for name, (scopes, _) in KEYS.items():
                allowed = open_ or scopes == "*" or category in scopes.split(",")
                r = http_call(s, category, bearer(name))
                g = grpc_call(grpc, category, {"authorization": bearer(name)["Authorization"]})
                if allowed:
                    assert r.status_code not in (401, 403), (category, name, r.text)
                    assert g not in ("UNAUTHENTICATED", "PERMISSION_DENIED"), (category, name, g)
                else:
                    assert r.status_code == 403, (category, name, r.status_code, r.text)
                    assert f"'{name}'" in r.json()["error"] and category in r.json()["error"]
                    assert g == "PERMISSION_DENIED", (category, name, g)
        # What the scoped keys reach is the real endpoint, with real answers.
        r = http_call(s, "inference", bearer("reader"))
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], reference(X)[0],
                                   rtol=1e-4, atol=1e-5)
        assert http_call(s, "statistics", bearer("stats")).json()["model_stats"]
        # Secrets never reach the log, names do.
        log = s.log()
        assert "reader=metadata,inference" in log
        for _, key in KEYS.values():
            assert key not in log
    finally:
        assert s.stop() == 0, s.log()


def test_keys_from_the_environment_and_health_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_API_KEYS", "probe health 0123456789-probe-key;"
                                          "infer inference 0123456789-infer-key")
    s = Server(EXAMPLES, "--api-open-scopes", "none")
    try:
        assert requests.get(s.base + "/v2/health/live", timeout=10).status_code == 401
        h = {"Authorization": "Bearer 0123456789-probe-key"}
        assert requests.get(s.base + "/v2/health/live", headers=h, timeout=10).status_code == 200
        r = requests.post(s.base + "/v2/models/mlp/infer", json=INFER_BODY, headers=h, timeout=30)
        assert r.status_code == 403
        h = {"Authorization": "Bearer 0123456789-infer-key"}
        r = requests.post(s.base + "/v2/models/mlp/infer", json=INFER_BODY, headers=h, timeout=30)
        assert r.status_code == 200
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        assert grpc_call(grpc, "health", None) == "UNAUTHENTICATED"
        assert grpc_call(grpc, "health", {"authorization": "Bearer 0123456789-probe-key"}) == "OK"
    finally:
        assert s.stop() == 0, s.log()


def test_triton_restricted_api_form(tmp_path):
    s = Server(EXAMPLES, "--model-control-mode", "explicit", "--load-model", "mlp",
               "--http-restricted-api", "model-repository,logging:admin-key=admin-value-42",
               "--grpc-restricted-protocol", "model-repository:admin-key=admin-value-42")
    try:
        # Unrestricted categories stay open, as in Triton.
        r = requests.post(s.base + "/v2/models/mlp/infer", json=INFER_BODY, timeout=30)
        assert r.status_code == 200
        assert requests.post(s.base + "/v2/repository/index", timeout=10).status_code == 401
        bad = {"admin-key": "admin-value-43"}
        assert requests.post(s.base + "/v2/repository/index", headers=bad,
                             timeout=10).status_code == 401
        good = {"admin-key": "admin-value-42"}
        r = requests.post(s.base + "/v2/repository/index", headers=good, timeout=10)
        assert r.status_code == 200 and any(m["name"] == "mlp" for m in r.json())
        assert requests.get(s.base + "/v2/logging", headers=good, timeout=10).status_code == 200
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        assert grpc_call(grpc, "model-repository", None) == "UNAUTHENTICATED"
        assert grpc_call(grpc, "model-repository", good) == "OK"
        # Logging is restricted on HTTP only.
        assert grpc_call(grpc, "logging", None) == "OK"
        assert grpc_call(grpc, "inference", None) == "OK"
    finally:
        assert s.stop() == 0, s.log()


def test_bad_key_files_are_refused_without_echoing_secrets(tmp_path):
    for text, message in [("a inference too-short\n", "shorter than 16"),
                          ("a bogus 0123456789abcdefXYZ\n", "unknown API category"),
                          ("a * 0123456789abcdefXYZ\nb * 0123456789abcdefXYZ\n", "same secret")]:
        path = tmp_path / "keys"
        path.write_text(text)
        out = subprocess.run([str(BIN), "serve", "--model-repository", str(EXAMPLES),
                              "--api-keys-file", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "0123456789abcdefXYZ" not in out.stderr and "too-short" not in out.stderr


# --- bounded shutdown (issue 21, defect 2) ----------------------------------------

def test_sigterm_ends_within_the_exit_timeout_despite_stuck_connections():
    s = Server(EXAMPLES, "--exit-timeout-secs", "2", "--http-header-read-timeout", "0")
    sockets = []
    try:
        addr = ("127.0.0.1", s.http_port)
        # A request whose body never completes: the handler is reading it (the server
        # asked for the body with 100 Continue), so graceful shutdown waits for it.
        stuck = socket.create_connection(addr)
        stuck.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n"
                      b"Expect: 100-continue\r\n\r\n")
        stuck.settimeout(10)
        assert stuck.recv(100).startswith(b"HTTP/1.1 100")
        stuck.sendall(b'{"inputs": [')
        sockets.append(stuck)
        # A request head that never ends (no header timeout on this server).
        half = socket.create_connection(addr)
        half.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        sockets.append(half)
        # Other clients are served meanwhile.
        assert requests.get(s.base + "/v2/health/live", timeout=10).status_code == 200
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(20)
        took = time.monotonic() - started
        assert code == 0, s.log()
        assert 1.5 < took < 10, took
        assert "still open at the exit timeout" in s.log()
        # The stuck connection was closed by the server.
        stuck.settimeout(5)
        assert stuck.recv(100) == b""
    finally:
        for sock in sockets:
            sock.close()
        if s.proc.poll() is None:
            s.proc.kill()


# --- request limits (issue 21, defect 5) ------------------------------------------

def vm_hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def raw_infer(channel):
    from tritonclient.grpc import service_pb2
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda b: b,
                               response_deserializer=service_pb2.ModelInferResponse.FromString)


def test_limits_just_under_pass_and_just_over_are_refused_on_both_protocols():
    s = Server(EXAMPLES, "--max-request-inputs", "1", "--max-request-elements", "784",
               "--max-request-parameters", "2")
    try:
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        x = np.full((1, 784), 0.5, np.float32)
        # Just under every limit: answered, with the right numbers.
        body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                            "data": x.ravel().tolist()}],
                "parameters": {"a": 1, "b": 2}}
        r = requests.post(s.base + "/v2/models/mlp/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], reference(x)[0],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grpc_infer(grpc, x), reference(x), rtol=1e-4, atol=1e-5)
        # Just over each: a 400 / INVALID_ARGUMENT naming the flag.
        cases = [
            ({**body, "inputs": body["inputs"] * 2}, "--max-request-inputs"),
            ({**body, "parameters": {"a": 1, "b": 2, "c": 3}}, "--max-request-parameters"),
            ({"inputs": [{"name": "input", "shape": [1, 785], "datatype": "FP32",
                          "data": [0.0] * 785}]}, "--max-request-elements"),
            # A shape claiming 10^12 elements is refused before anything is allocated.
            ({"inputs": [{"name": "input", "shape": [1000000, 1000000], "datatype": "FP32",
                          "data": [0.0]}]}, "--max-request-elements"),
        ]
        for bad, flag in cases:
            r = requests.post(s.base + "/v2/models/mlp/infer", json=bad, timeout=30)
            assert r.status_code == 400 and flag in r.json()["error"], (flag, r.text)
        two = [grpcclient.InferInput("input", [1, 784], "FP32") for _ in range(2)]
        for i in two:
            i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as e:
            grpc.infer("mlp", two)
        assert "INVALID_ARGUMENT" in str(e.value.status()) and "--max-request-inputs" in str(e.value)
        big = grpcclient.InferInput("input", [1, 785], "FP32")
        big.set_data_from_numpy(np.zeros((1, 785), np.float32))
        with pytest.raises(InferenceServerException) as e:
            grpc.infer("mlp", [big])
        assert "--max-request-elements" in str(e.value)
        claim = grpcclient.InferInput("input", [1000000, 1000000], "FP32")
        claim._get_tensor().contents.fp32_contents.append(0.0)
        with pytest.raises(InferenceServerException) as e:
            grpc.infer("mlp", [claim])
        assert "--max-request-elements" in str(e.value)
        # The server keeps serving.
        assert requests.get(s.base + "/v2/health/ready", timeout=10).status_code == 200
    finally:
        assert s.stop() == 0, s.log()


def test_many_empty_grpc_inputs_or_outputs_do_not_grow_the_server():
    import grpc as grpcio
    s = Server(EXAMPLES)
    try:
        channel = grpcio.insecure_channel(
            s.grpc_url, options=[("grpc.max_send_message_length", 64 << 20)])
        call = raw_infer(channel)
        name = b"\x0a\x03mlp"
        # Warm the server up with one real request first, then take the baseline.
        assert grpcclient.InferenceServerClient(s.grpc_url).is_server_ready()
        before = vm_hwm_kib(s.proc.pid)
        for field in (b"\x2a\x00", b"\x32\x00"):  # inputs (5), outputs (6): empty messages
            # Just under the default limit (1024): decoded, then refused by the model check.
            with pytest.raises(grpcio.RpcError) as e:
                call(name + field * 1024, timeout=30)
            assert "--max-request" not in e.value.details(), e.value.details()
            # 4 MiB of them (2 million): refused before decoding.
            with pytest.raises(grpcio.RpcError) as e:
                call(name + field * (2 << 20), timeout=30)
            assert e.value.code() == grpcio.StatusCode.INVALID_ARGUMENT
            assert "--max-request-" in e.value.details(), e.value.details()
        grown_mib = (vm_hwm_kib(s.proc.pid) - before) / 1024
        # Before the guard, the inputs case alone peaked about 624 MiB higher.
        assert grown_mib < 48, grown_mib
        np.testing.assert_allclose(grpc_infer(grpcclient.InferenceServerClient(s.grpc_url), X),
                                   reference(X), rtol=1e-4, atol=1e-5)
        channel.close()
    finally:
        assert s.stop() == 0, s.log()
