"""Scheduling end to end: concurrent clients batched together each get exactly their
own rows back; queue timeouts, priorities and the queue bound over HTTP."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from conftest import (EXAMPLES, GATED_WIDTH, Server, gated_body, make_gated_model, metric,
                      wait_for_queue, wait_until)
from models import assert_close, reference


def post_rows(base, model, name, x, **params):
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    if params:
        body["parameters"] = params
    return requests.post(f"{base}/v2/models/{model}/infer", json=body, timeout=60)


def test_concurrent_clients_get_their_own_rows(tmp_path):
    # The CNN with a dynamic batcher that waits long enough to gather many requests.
    shutil.copytree(EXAMPLES / "cnn", tmp_path / "cnn")
    (tmp_path / "cnn" / "config.pbtxt").write_text(
        'max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 preferred_batch_size: [ 16 ] }\n'
        'instance_group [ { count: 1 } ]\n'
        'parameters { key: "sluice_adaptive_batching" value: { string_value: "false" } }\n')
    shutil.copytree(EXAMPLES / "mlp", tmp_path / "mlp")
    s = Server(tmp_path)
    try:
        rng = np.random.default_rng(7)
        jobs = []
        for i in range(48):
            rows = 1 + i % 3
            if i % 2:
                jobs.append(("cnn", "image", rng.standard_normal((rows, 3, 32, 32)).astype(np.float32)))
            else:
                jobs.append(("mlp", "input", rng.standard_normal((rows, 784)).astype(np.float32)))

        def run(job):
            model, name, x = job
            r = post_rows(s.base, model, name, x)
            assert r.status_code == 200, r.text
            out = r.json()["outputs"][0]
            return np.array(out["data"], dtype=np.float32).reshape(out["shape"])

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(run, jobs))
        for (model, name, x), got in zip(jobs, results):
            expected = reference(model, {name: x})
            expected = expected["logits"] if model == "cnn" else expected["probabilities"]
            # Row by row: each client got exactly its own rows, in order.
            for row in range(x.shape[0]):
                assert_close(got[row], expected[row], what=f"{model} row {row}")
    finally:
        assert s.stop() == 0


def test_queue_timeout_priority_and_bound(tmp_path):
    """One gated instance (its runs wait until the test lets them go) and a queue of 2:
    a request that may wait 5 ms times out in the queue, two more fill it, the next is
    rejected at once; then all the accepted ones are answered."""
    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "slow")
    s = Server(tmp_path, "--queue-capacity", "2", "--test-execution-gates", str(gates))
    try:
        x = np.ones((1, GATED_WIDTH), dtype=np.float32)
        # Invalid scheduling parameters are clear 400s.
        r = post_rows(s.base, "slow", "x", x, priority=9)
        assert r.status_code == 400 and "priority 9 is outside 1..=1" in r.json()["error"], r.text
        r = post_rows(s.base, "slow", "x", x, timeout=-5)
        assert r.status_code == 400 and "timeout" in r.json()["error"], r.text

        results = {}

        def send(key, **params):
            results[key] = post_rows(s.base, "slow", "x", x, **params)

        first = threading.Thread(target=send, args=("first",))
        first.start()
        wait_for_queue(s, "slow", running=1, queued=0)
        # A request that may wait 5 ms in the queue times out there, without running.
        send("timed", timeout=5000)
        assert results["timed"].status_code == 504, results["timed"].text
        assert "timed out" in results["timed"].json()["error"]
        # Fill the queue (capacity 2) and one more: rejected at once with 429.
        waiting = [threading.Thread(target=send, args=(f"q{i}",)) for i in range(2)]
        for t in waiting:
            t.start()
        wait_for_queue(s, "slow", running=1, queued=2)
        send("over")
        assert results["over"].status_code == 429, results["over"].text[:200]
        assert "full" in results["over"].json()["error"]
        gate.release(3)
        first.join(30)
        for t in waiting:
            t.join(30)
        assert [results[k].status_code for k in ("first", "q0", "q1")] == [200, 200, 200]
        assert metric(s, "sluice_inference_executions_total", model="slow") == 3, "the timed-out one never ran"
    finally:
        gate.open_for_good()
        gate.close()
        assert s.stop() == 0


def test_a_request_whose_client_disconnects_never_runs(tmp_path):
    """Three requests to a one-instance gated model: the middle one's client hangs up
    while it is queued. The gate then lets exactly two runs through: the first and the
    third requests are answered, so the abandoned one never reached the engine."""
    import json
    import socket

    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "slow")
    s = Server(tmp_path, "--test-execution-gates", str(gates))
    try:
        body = json.dumps(gated_body()).encode()

        def post():
            r = requests.post(f"{s.base}/v2/models/slow/infer", data=body, timeout=60)
            assert r.status_code == 200, r.text[:200]

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post)
            wait_for_queue(s, "slow", running=1, queued=0)
            sock = socket.create_connection(("127.0.0.1", s.http_port))
            sock.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: sluice\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            wait_for_queue(s, "slow", running=1, queued=1)
            sock.close()  # the client goes away while its request is queued
            assert wait_until(lambda: metric(s, "sluice_inference_requests_total", model="slow",
                                             outcome="cancelled") == 1, timeout=30), s.log()
            third = pool.submit(post)
            wait_for_queue(s, "slow", running=1, queued=1)
            gate.release(2)
            first.result()
            third.result()
        assert metric(s, "sluice_inference_executions_total", model="slow") == 2
    finally:
        gate.open_for_good()
        gate.close()
        assert s.stop() == 0
