"""Model repositories in a real S3 server (SeaweedFS, credentials enforced, started and
killed by these tests): `--model-repository s3://...` in both URL forms and mixed with
local folders, all three control modes, the local cache, and bad input.

Outputs are compared with ONNX Runtime running the same files, and with a server on
the local folder. Nothing waits for "long enough": a half-uploaded version is held by
the test (a multipart upload left open) while other uploads prove that the server has
listed the bucket several times since."""

import json
import os

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import EXAMPLES, Server, wait_until
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference
from seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from test_repository import Oracle, grpc_infer, http_infer, tagged_config, tagged_model

POLL = "0.3"
WIDTH = 16


@pytest.fixture(scope="module")
def store():
    s = Seaweed().start()
    yield s
    s.cleanup()


@pytest.fixture
def aws(monkeypatch, store):
    """The environment a server reaches `store` with (servers inherit it)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in store.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    return store


_BUCKETS = iter(range(1000))


def new_bucket(store, tag):
    name = f"{tag}-{next(_BUCKETS)}-{os.getpid()}"
    store.client().create_bucket(Bucket=name)
    return name


def put_model(client, bucket, prefix, name, version, data, config=None):
    if config is not None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}/config.json", Body=json.dumps(config).encode())
    client.put_object(Bucket=bucket, Key=f"{prefix}/{name}/{version}/model.onnx", Body=data)


def index(server):
    return requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()


def ready_versions(server, name):
    return sorted(int(r["version"]) for r in index(server)
                  if r["name"] == name and r.get("state") == "READY" and r.get("version"))


def infer_all(http, grpc, name, seed):
    inputs = random_inputs(name, seed=seed)
    h_in, g_in = [], []
    for iname, arr in inputs.items():
        h = httpclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
        h.set_data_from_numpy(arr, binary_data=True)
        h_in.append(h)
        g = grpcclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
        g.set_data_from_numpy(arr)
        g_in.append(g)
    hr, gr = http.infer(name, h_in), grpc.infer(name, g_in)
    outs = MODELS[name]["outputs"]
    return inputs, {o: hr.as_numpy(o) for o in outs}, {o: gr.as_numpy(o) for o in outs}


def test_bucket_serves_the_example_repository_like_the_local_folder(aws, monkeypatch, start_server, tmp_path):
    bucket = new_bucket(aws, "examples")
    aws.upload_tree(bucket, "repo", EXAMPLES)
    local = tmp_path / "local"
    (local / "extra" / "1").mkdir(parents=True)
    (local / "extra" / "1" / "model.onnx").write_bytes(tagged_model(3))
    (local / "extra" / "config.json").write_text(json.dumps(tagged_config("extra")))
    # Triton's endpoint form, mixed with a local folder (no AWS_ENDPOINT_URL needed).
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    remote = start_server(f"s3://127.0.0.1:{aws.s3}/{bucket}/repo", "--model-repository", str(local))
    folder = start_server(EXAMPLES)
    for s in (remote, folder):
        assert wait_until(lambda s=s: requests.get(f"{s.base}/v2/health/ready").status_code == 200, 60), s.log()
    rows = {r["name"]: r for r in index(remote)}
    assert set(rows) == set(MODELS) | {"extra"}, rows
    assert all(r["state"] == "READY" for r in rows.values()), rows
    clients = [(httpclient.InferenceServerClient(s.http_url), grpcclient.InferenceServerClient(s.grpc_url))
               for s in (remote, folder)]
    for seed, name in enumerate(MODELS):
        inputs, r_http, r_grpc = infer_all(*clients[0], name, seed)
        _, f_http, _ = infer_all(*clients[1], name, seed)
        expected = reference(name, inputs)
        for out in MODELS[name]["outputs"]:
            assert_close(r_http[out], expected[out], what=f"{name}.{out} over HTTP from the bucket")
            assert_close(r_grpc[out], expected[out], what=f"{name}.{out} over gRPC from the bucket")
            # tract picks its batch plan by measured speed, so two servers may round
            # differently in the last bit; the files themselves are the same bytes.
            assert_close(r_http[out], f_http[out], rtol=1e-5, atol=1e-6, what=f"{name}.{out}: bucket vs folder")
    x = np.ones((2, WIDTH), np.float32)
    oracle = Oracle()
    oracle.add(3, tagged_model(3))
    version, y = http_infer(clients[0][0], "extra", x)
    assert_close(y, oracle.run(3, x), what="the local model beside the bucket")
    # Nothing secret in the log, the index or the metrics.
    metrics = requests.get(f"http://127.0.0.1:{remote.metrics_port}/metrics").text
    for text in (remote.log(), json.dumps(index(remote)), metrics):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_poll_mode_follows_uploads_never_loads_a_half_upload_and_unloads_deleted_models(aws, start_server):
    bucket = new_bucket(aws, "poll")
    c = aws.client()
    oracle = Oracle()
    for v in (1, 2, 3):
        oracle.add(v, tagged_model(v, hidden=100_000 if v == 3 else None))
    put_model(c, bucket, "repo", "polled", 1, tagged_model(1), tagged_config("polled"))
    s = start_server(f"s3://{bucket}/repo", "--model-control-mode", "poll", "--repository-poll-secs", POLL)
    http = httpclient.InferenceServerClient(s.http_url)
    grpc = grpcclient.InferenceServerClient(s.grpc_url)
    x = np.ones((2, WIDTH), np.float32)
    assert http_infer(http, "polled", x)[0] == 1

    # A new version uploaded: served after the debounce, with its own outputs.
    put_model(c, bucket, "repo", "polled", 2, tagged_model(2))
    assert wait_until(lambda: http_infer(http, "polled", x)[0] == 2, timeout=60), s.log()
    version, y = grpc_infer(grpc, "polled", x)
    assert version == 2
    assert_close(y, oracle.run(2, x), what="v2 from the bucket")

    # Version 3 uploaded in two parts; the test holds the upload open between them.
    big = tagged_model(3, hidden=100_000)
    cut = 5 * 1024 * 1024 + 17
    assert len(big) > cut + 1000
    key = "repo/polled/3/model.onnx"
    upload = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part1 = c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=big[:cut])

    def v3_seen():
        return 3 in ready_versions(s, "polled") or http_infer(http, "polled", x)[0] == 3

    # Each canary version is served only after the server listed the bucket (at least
    # twice) after it was uploaded, so the server has looked at the held upload then.
    for canary in (1, 2, 3):
        put_model(c, bucket, "repo", "canary", canary, tagged_model(10 + canary),
                  tagged_config("canary") if canary == 1 else None)
        assert wait_until(lambda: canary in ready_versions(s, "canary") or v3_seen(), timeout=60), s.log()
        assert not v3_seen(), "version 3 was served before its last part was uploaded"
    part2 = c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2, Body=big[cut:])
    c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": part1["ETag"]}, {"PartNumber": 2, "ETag": part2["ETag"]}]})
    assert wait_until(lambda: http_infer(http, "polled", x)[0] == 3, timeout=60), s.log()
    assert_close(http_infer(http, "polled", x)[1], oracle.run(3, x), what="v3 after the last part")

    # A model deleted from the bucket is unloaded.
    for obj in c.list_objects_v2(Bucket=bucket, Prefix="repo/canary/")["Contents"]:
        c.delete_object(Bucket=bucket, Key=obj["Key"])
    assert wait_until(lambda: all(r["name"] != "canary" for r in index(s)), timeout=60), s.log()
    assert not http.is_model_ready("canary")
    assert http_infer(http, "polled", x)[0] == 3


def test_store_down_at_start_serves_local_models_and_picks_the_bucket_up_later(monkeypatch, start_server, tmp_path):
    down = Seaweed()  # ports chosen, not started
    try:
        for k in list(os.environ):
            if k.startswith("AWS_"):
                monkeypatch.delenv(k)
        for k, v in down.env().items():
            if k.startswith("AWS_"):
                monkeypatch.setenv(k, v)
        local = tmp_path / "local"
        (local / "here" / "1").mkdir(parents=True)
        (local / "here" / "1" / "model.onnx").write_bytes(tagged_model(4))
        (local / "here" / "config.json").write_text(json.dumps(tagged_config("here")))
        url = "s3://late/repo"
        s = start_server(local, "--model-repository", url, "--model-control-mode", "poll",
                         "--repository-poll-secs", POLL)
        http = httpclient.InferenceServerClient(s.http_url)
        x = np.ones((2, WIDTH), np.float32)
        assert http_infer(http, "here", x)[0] == 1
        rows = {r["name"]: r for r in index(s)}
        assert "retrying in" in rows[url]["reason"], rows
        down.start()
        c = down.client()
        c.create_bucket(Bucket="late")
        put_model(c, "late", "repo", "remote", 1, tagged_model(5), tagged_config("remote"))
        # Backoff is capped at 30 s; the store answers within that.
        assert wait_until(lambda: http.is_model_ready("remote"), timeout=90), s.log()
        assert http_infer(http, "remote", x)[0] == 1
        assert url not in {r["name"] for r in index(s)}
        # The store goes away again: what was downloaded keeps serving, with the reason.
        down.stop()
        assert wait_until(lambda: "serving the files downloaded before" in
                          {r["name"]: r for r in index(s)}.get("remote", {}).get("reason", ""), timeout=60), index(s)
        assert http_infer(http, "remote", x)[0] == 1
        assert http_infer(http, "here", x)[0] == 1
    finally:
        down.cleanup()


def test_wrong_credentials_missing_bucket_and_oversized_objects_are_clear_errors(aws, monkeypatch, start_server,
                                                                               tmp_path):
    bucket = new_bucket(aws, "bad")
    c = aws.client()
    put_model(c, bucket, "repo", "small", 1, tagged_model(6), tagged_config("small"))
    put_model(c, bucket, "repo", "big", 1, tagged_model(7, hidden=20_000), tagged_config("big"))
    local = tmp_path / "local"
    (local / "here" / "1").mkdir(parents=True)
    (local / "here" / "1" / "model.onnx").write_bytes(tagged_model(4))
    (local / "here" / "config.json").write_text(json.dumps(tagged_config("here")))
    s = start_server(f"s3://{bucket}/repo", "--model-repository", "s3://no-such-bucket/repo",
                     "--model-repository", str(local), "--model-max-object-bytes", "200000",
                     "--strict-readiness", "false")
    rows = {r["name"]: r for r in index(s)}
    assert rows["small"]["state"] == "READY" and rows["here"]["state"] == "READY", rows
    assert rows["big"]["state"] == "UNAVAILABLE", rows
    assert "more than the 200000 bytes allowed" in rows["big"]["reason"], rows
    missing = rows["s3://no-such-bucket/repo"]
    assert missing["state"] == "UNAVAILABLE" and "NoSuchBucket" in missing["reason"], missing
    http = httpclient.InferenceServerClient(s.http_url)
    x = np.ones((2, WIDTH), np.float32)
    assert http_infer(http, "small", x)[0] == 1

    wrong = "not-the-secret-" + "x" * 12
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    t = start_server(f"s3://{bucket}/repo", "--model-repository", str(local))
    rows = {r["name"]: r for r in index(t)}
    reason = rows[f"s3://{bucket}/repo"]["reason"]
    assert "SignatureDoesNotMatch" in reason or "403" in reason, reason
    assert http_infer(httpclient.InferenceServerClient(t.http_url), "here", x)[0] == 1
    metrics = requests.get(f"http://127.0.0.1:{t.metrics_port}/metrics").text
    for text in (t.log(), json.dumps(index(t)), metrics, s.log()):
        assert wrong not in text and SECRET_KEY not in text and ACCESS_KEY not in text


def test_warm_cache_restart_downloads_nothing_unchanged(aws, start_server, tmp_path):
    bucket = new_bucket(aws, "warm")
    aws.upload_tree(bucket, "repo", EXAMPLES)
    cache = tmp_path / "cache"
    args = (f"s3://{bucket}/repo", "--model-cache-dir", str(cache))
    files = sum(1 for p in EXAMPLES.rglob("*") if p.is_file() and p.parent != EXAMPLES)

    def gets():
        return aws.requests("GET", bucket)

    before = gets()
    first = start_server(*args)
    assert all(r["state"] == "READY" for r in index(first))
    assert gets() - before == files, (gets() - before, files)
    assert first.stop() == 0
    before = gets()
    second = start_server(*args)
    assert all(r["state"] == "READY" for r in index(second)) and len(index(second)) == len(MODELS)
    assert gets() == before, "a warm cache downloaded again"
    assert "downloaded=0" in second.log()
    assert second.stop() == 0
    # One object changed: only that one is downloaded.
    c = aws.client()
    c.put_object(Bucket=bucket, Key="repo/mlp/config.pbtxt",
                 Body=(EXAMPLES / "mlp" / "config.pbtxt").read_bytes() + b"\n# changed\n")
    before = gets()
    third = start_server(*args)
    assert all(r["state"] == "READY" for r in index(third))
    assert gets() - before == 1


def test_explicit_mode_downloads_and_loads_on_request(aws, start_server):
    bucket = new_bucket(aws, "explicit")
    c = aws.client()
    put_model(c, bucket, "repo", "one", 1, tagged_model(8), tagged_config("one"))
    put_model(c, bucket, "repo", "two", 1, tagged_model(9), tagged_config("two"))
    s = start_server(f"s3://{bucket}/repo", "--model-control-mode", "explicit", "--load-model", "one",
                     "--repository-poll-secs", POLL)
    http = httpclient.InferenceServerClient(s.http_url)
    x = np.ones((2, WIDTH), np.float32)
    assert http_infer(http, "one", x)[0] == 1
    assert wait_until(lambda: any(r["name"] == "two" and "not loaded" in r.get("reason", "")
                                  for r in index(s)), timeout=30), index(s)
    before = aws.requests("GET", bucket)
    http.load_model("two")
    assert aws.requests("GET", bucket) - before == 2  # its config and its model file
    oracle = Oracle()
    oracle.add(9, tagged_model(9))
    oracle.add(19, tagged_model(19))
    assert_close(http_infer(http, "two", x)[1], oracle.run(9, x), what="two v1")
    # A load reads the bucket again: a new version is served after it.
    put_model(c, bucket, "repo", "two", 2, tagged_model(19))
    assert http_infer(http, "two", x)[0] == 1
    http.load_model("two")
    version, y = http_infer(http, "two", x)
    assert version == 2
    assert_close(y, oracle.run(19, x), what="two v2 after an explicit load")
