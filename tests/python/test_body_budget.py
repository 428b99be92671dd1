"""The server-wide budget of request-body bytes in flight (`--max-inflight-body-bytes`,
issue 21), attacked from outside with raw sockets that hold bodies in flight, plain
`requests` and tritonclient over gRPC.

Gated deterministically: a body is in flight for as long as its raw socket has not sent
its last byte, and `Expect: 100-continue` tells when the server holds a body's share (it
asks for the body only then), so nothing here depends on the machine's speed. Answers are
compared with onnxruntime."""

import json
import socket

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, Server

BUDGET = 290_000
MAX_BODY = 200_000
FLAGS = ["--max-inflight-body-bytes", str(BUDGET), "--max-body-bytes", str(MAX_BODY),
         "--grpc-max-message-bytes", str(MAX_BODY)]


def reference(x):
    session = ort.InferenceSession(str(EXAMPLES / "mlp" / "1" / "model.onnx"))
    return session.run(None, {"input": x})[0]


def mlp_json(x, size=None):
    """An infer body for mlp, padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": [float(v) for v in x.ravel()]}]}).encode()
    if size is not None:
        assert len(body) <= size, len(body)
        body = body[:-1] + b" " * (size - len(body)) + b"}"
    return body


def head(port, length=None, chunked=False, expect=False):
    lines = ["POST /v2/models/mlp/infer HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "Content-Type: application/json"]
    if expect:
        lines.append("Expect: 100-continue")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock, timeout=30):
    """(status, parsed JSON body) of one HTTP/1.1 response on `sock`; (100, None) for
    an interim `100 Continue`."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = header.decode().split("\r\n")
    status = int(lines[0].split()[1])
    if status == 100:
        assert not rest, rest
        return 100, None
    fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(fields["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return status, json.loads(rest[:length])


def busy(reply):
    status, body = reply
    return status == 503 and "--max-inflight-body-bytes" in body["error"]


@pytest.fixture
def server():
    s = Server(EXAMPLES, *FLAGS)
    yield s
    assert s.stop() == 0, s.log()


def test_bodies_in_flight_are_bounded_and_served_once_the_budget_frees(server):
    s = server
    rng = np.random.default_rng(21)
    held_x = rng.standard_normal((8, 784)).astype(np.float32)
    held_body = mlp_json(held_x, size=MAX_BODY)
    probe_body = b"{" + b" " * 99_998 + b"}"  # 100 000 bytes: fits alone, not beside `held`
    sockets = []

    def connect():
        sock = socket.create_connection(("127.0.0.1", s.http_port))
        sockets.append(sock)
        return sock

    def probe():
        # `Expect: 100-continue`: the body is sent only if the server asks for it, so
        # a refusal from the head leaves no unread bytes behind (no TCP reset).
        sock = connect()
        sock.sendall(head(s.http_port, len(probe_body), expect=True))
        reply = read_response(sock)
        if reply[0] != 100:
            return reply
        sock.sendall(probe_body)
        return read_response(sock)

    try:
        # A max-size body whose last byte is held back: it takes MAX_BODY of the budget
        # when its head arrives (Content-Length), until it is answered. The server asks
        # for the body (`100 Continue`) only once it holds that share, so the test knows
        # when it does.
        held = connect()
        held.sendall(head(s.http_port, len(held_body), expect=True))
        assert read_response(held) == (100, None)
        held.sendall(held_body[:-1])
        # A body that does not fit beside it is refused from its head alone.
        assert busy(probe()), "the held body took no budget"

        # Many concurrent large bodies: each is refused at once, from its head alone
        # (none of their bytes is sent), so they cannot make the server buffer them.
        many = [connect() for _ in range(8)]
        for sock in many:
            sock.sendall(head(s.http_port, MAX_BODY))
        for sock in many:
            status, body = read_response(sock)
            assert status == 503, body
            assert "--max-inflight-body-bytes" in body["error"] and "retry later" in body["error"]

        # A body with no Content-Length is counted as it arrives: the budget's last
        # BUDGET - MAX_BODY bytes fit, the byte after them is refused.
        chunked = connect()
        part = b" " * (BUDGET - MAX_BODY)
        chunked.sendall(head(s.http_port, chunked=True) + b"%x\r\n%s\r\n1\r\n " % (len(part), part))
        assert busy(read_response(chunked)), "a chunked body past the budget was not refused"

        # Small requests still fit and are served, over HTTP...
        small_x = rng.standard_normal((1, 784)).astype(np.float32)
        r = requests.post(f"{s.base}/v2/models/mlp/infer", data=mlp_json(small_x), timeout=30)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, reference(small_x), rtol=1e-4, atol=1e-5)

        # ... and gRPC; a gRPC message that does not fit is RESOURCE_EXHAUSTED.
        client = grpcclient.InferenceServerClient(s.grpc_url)
        big_x = rng.standard_normal((32, 784)).astype(np.float32)  # 100 352 bytes raw
        big = grpcclient.InferInput("input", list(big_x.shape), "FP32")
        big.set_data_from_numpy(big_x)
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [big], client_timeout=30)
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED", e.value
        assert "--max-inflight-body-bytes" in e.value.message(), e.value
        tiny = grpcclient.InferInput("input", [1, 784], "FP32")
        tiny.set_data_from_numpy(small_x)
        out = client.infer("mlp", [tiny], client_timeout=30).as_numpy("probabilities")
        np.testing.assert_allclose(out, reference(small_x), rtol=1e-4, atol=1e-5)

        # The held body's last byte: it is answered, correctly, and frees its budget.
        held.sendall(held_body[-1:])
        status, body = read_response(held)
        assert status == 200, body
        got = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(8, 10)
        np.testing.assert_allclose(got, reference(held_x), rtol=1e-4, atol=1e-5)

        # What was refused is served now.
        out = client.infer("mlp", [big], client_timeout=30).as_numpy("probabilities")
        np.testing.assert_allclose(out, reference(big_x), rtol=1e-4, atol=1e-5)
        status, body = probe()
        assert status == 400, body  # read whole now: a JSON body that is no request
        r = requests.post(f"{s.base}/v2/models/mlp/infer", data=mlp_json(held_x, size=MAX_BODY),
                          timeout=30)
        assert r.status_code == 200, r.text
        client.close()
    finally:
        for sock in sockets:
            sock.close()


def test_a_budget_smaller_than_one_body_is_refused_at_startup():
    with pytest.raises(RuntimeError) as e:
        Server(EXAMPLES, "--max-inflight-body-bytes", "1000")
    assert "--max-inflight-body-bytes (1000) must be at least --max-body-bytes" in str(e.value)
    # 0 turns the bound off: a max-size body is served with nothing else in flight.
    s = Server(EXAMPLES, "--max-inflight-body-bytes", "0", "--max-body-bytes", str(MAX_BODY))
    try:
        x = np.zeros((2, 784), dtype=np.float32)
        r = requests.post(f"{s.base}/v2/models/mlp/infer", data=mlp_json(x, size=MAX_BODY),
                          timeout=30)
        assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0, s.log()
