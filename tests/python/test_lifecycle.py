"""Process lifecycle: SIGTERM lets accepted requests finish (queued ones included) and
exits 0; logs can be JSON; --help documents every flag with its environment variable."""

import json
import signal
import subprocess
import threading

import pytest
import requests

from conftest import BIN, EXAMPLES, GATED_WIDTH, Server, gated_body, make_gated_model, wait_for_queue, wait_until


def test_sigterm_finishes_accepted_requests_and_exits_zero(tmp_path):
    """Four requests on a one-instance model whose runs wait on an execution gate: one
    is in the engine and three are queued when SIGTERM arrives (observed, not assumed).
    All four are answered after the gate opens, and the server exits 0."""
    repo, gates = tmp_path / "repo", tmp_path / "gates"
    gate = make_gated_model(repo, gates, "slow")
    s = Server(repo, "--test-execution-gates", str(gates))
    results = []

    def send():
        try:
            r = requests.post(f"{s.base}/v2/models/slow/infer", json=gated_body(), timeout=60)
            results.append((r.status_code, r.json()["outputs"][0]["data"] if r.ok else r.text))
        except requests.RequestException as e:  # noqa: BLE001 - recorded and asserted below
            results.append(repr(e))

    threads = [threading.Thread(target=send) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for_queue(s, "slow", running=1, queued=3)
        s.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "shutting down" in s.log(), timeout=30), s.log()
        assert not results, "nothing may be answered before its run"
        gate.release(4)
        for t in threads:
            t.join(60)
        code = s.proc.wait(60)
    finally:
        gate.open_for_good()
        gate.close()
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    assert results == [(200, [2.0] * GATED_WIDTH)] * 4, (results, s.log())
    assert code == 0, s.log()
    # And nothing listens any more.
    try:
        requests.get(f"{s.base}/v2/health/live", timeout=2)
        raise AssertionError("server still answering after exit")
    except requests.ConnectionError:
        pass


def test_json_logs(tmp_path, request):
    from conftest import EXAMPLES
    s = Server(EXAMPLES, "--log-format", "json")
    try:
        def records():
            return [json.loads(line) for line in list(s.lines) if line.startswith("{")]
        # The ready file can come before the log reader thread has read the line.
        assert wait_until(lambda: any(r["fields"].get("message", "").startswith("HTTP server listening")
                                      for r in records()), timeout=30), s.log()
        assert all("level" in r and "timestamp" in r for r in records())
    finally:
        assert s.stop() == 0


def test_help_documents_flags_and_env_vars():
    out = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag, env in [("--model-repository", "SLUICE_MODEL_REPOSITORY"), ("--http-port", "SLUICE_HTTP_PORT"),
                      ("--max-body-bytes", "SLUICE_MAX_BODY_BYTES"), ("--strict-readiness", "SLUICE_STRICT_READINESS")]:
        assert flag in out and env in out, flag
    bad = subprocess.run([str(BIN), "serve", "--model-repository", "/nonexistent/repo", "--http-port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "not a folder" in bad.stderr


def test_connections_past_the_cap_wait_for_a_free_slot(start_server):
    import socket

    s = start_server(EXAMPLES, "--http-max-connections", "2")
    port = s.http_port
    request = f"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def connect():
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(request)
        return c

    # Two kept-alive connections, each answered, hold both slots.
    held = [connect(), connect()]
    for c in held:
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
    # A third connects (the kernel's backlog takes it) but is not served yet...
    third = connect()
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(4096)
    # ...until a slot frees: then it is answered, nothing lost.
    held.pop().close()
    third.settimeout(10)
    assert third.recv(4096).startswith(b"HTTP/1.1 200")
    for c in held + [third]:
        c.close()
