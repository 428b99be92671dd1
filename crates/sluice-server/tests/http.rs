//! Handler tests: the router driven with `oneshot`, no socket, over the example
//! models on the tract backend.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sluice_backend_tract::TractBackend;
use sluice_runtime::{Backends, Runtime};
use sluice_server::{app, HttpConfig};
use sluice_test_support::runtime_config;
use tower::ServiceExt;

fn runtime(rel: &str) -> Runtime {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    let config = runtime_config(repository).queue_capacity(16).build();
    Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap()
}

fn examples() -> Router {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| runtime("examples/models")).clone();
    app(rt, HttpConfig::default())
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn call(router: Router, request: Request<Body>) -> Reply {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(router: Router, uri: &str) -> Reply {
    call(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(router: Router, uri: &str, body: impl Into<Body>) -> Reply {
    call(router, Request::post(uri).body(body.into()).unwrap()).await
}

fn mixed_request() -> Value {
    json!({"id": "abc", "inputs": [
        {"name": "a", "shape": [4], "datatype": "INT32", "data": [1, 2, 3, -4]},
        {"name": "b", "shape": [4], "datatype": "FP64", "data": [[0.5, -1.0], [2.0, 3.0]]},
        {"name": "h", "shape": [4], "datatype": "FP16", "data": [1.5, 2.0, 3.0, -1.0]}
    ]})
}

#[tokio::test]
async fn health_and_server_metadata() {
    let r = get(examples(), "/v2/health/live").await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"live": true}))
    );
    let r = get(examples(), "/v2/health/ready").await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"ready": true}))
    );
    let r = get(examples(), "/v2").await;
    assert_eq!(r.json()["name"], "sluice");
    assert_eq!(
        r.json()["extensions"],
        json!([
            "binary_tensor_data",
            "model_configuration",
            "model_repository"
        ])
    );
}

#[tokio::test]
async fn model_metadata_with_and_without_version() {
    let r = get(examples(), "/v2/models/mlp").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"name": "mlp", "versions": ["1"], "platform": "tract_onnx",
               "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
               "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]})
    );
    assert_eq!(
        get(examples(), "/v2/models/mlp/versions/1").await.json(),
        r.json()
    );
    assert_eq!(
        get(examples(), "/v2/models/mixed").await.json()["platform"],
        "onnxruntime_onnx"
    );
    assert_eq!(
        get(examples(), "/v2/models/mlp/ready").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(examples(), "/v2/models/mlp/versions/1/ready")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(examples(), "/v2/models/mlp/versions/2/ready")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = get(examples(), "/v2/models/mlp/versions/2").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json()["error"],
        "Request for unknown model: 'mlp' version 2 is not found"
    );
    let r = get(examples(), "/v2/models/nope/config").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (
            StatusCode::NOT_FOUND,
            json!("Request for unknown model: 'nope' is not found")
        )
    );
    let r = get(examples(), "/v2/models/cnn/config").await;
    assert_eq!(r.json()["max_batch_size"], 4);
    assert_eq!(r.json()["backend"], "tract");
}

#[tokio::test]
async fn json_infer_nested_and_flat() {
    let r = post(
        examples(),
        "/v2/models/mixed/infer",
        mixed_request().to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["id"], "abc");
    assert_eq!(v["model_version"], "1");
    assert_eq!(
        v["outputs"][0],
        json!({"name": "sum", "datatype": "FP64", "shape": [4], "data": [1.5, 1.0, 5.0, -1.0]})
    );
    assert_eq!(v["outputs"][1]["data"], json!([2.25, 4.0, 9.0, 1.0]));
    assert_eq!(v["outputs"][2]["data"], json!([true, false, true, true]));

    let mut subset = mixed_request();
    subset["outputs"] = json!([{"name": "positive"}, {"name": "sum"}]);
    let v = post(
        examples(),
        "/v2/models/mixed/versions/1/infer",
        subset.to_string(),
    )
    .await
    .json();
    let names: Vec<&str> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["positive", "sum"]);
}

#[tokio::test]
async fn binary_infer_round_trip() {
    let x: Vec<u8> = (0..784)
        .flat_map(|i| (i as f32 / 784.0).to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.len()}}],
                        "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&x);
    let request = Request::post("/v2/models/mlp/infer")
        .header("Inference-Header-Content-Length", header.len())
        .body(Body::from(body))
        .unwrap();
    let r = call(examples(), request).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let n: usize = r.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let meta: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 40);
    let probs: Vec<f32> = r.body[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let cases = [
        ("/v2/models/mixed/infer", "{".to_owned(), StatusCode::BAD_REQUEST, "malformed request JSON"),
        ("/v2/models/nope/infer", "{}".to_owned(), StatusCode::NOT_FOUND, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/mixed/versions/9/infer", "{}".to_owned(), StatusCode::NOT_FOUND, "'mixed' version 9 is not found"),
        ("/v2/models/mixed/infer", json!({"inputs": []}).to_string(), StatusCode::BAD_REQUEST, "missing required input(s) ['a','b','h']"),
        (
            "/v2/models/mlp/infer",
            json!({"inputs": [{"name": "input", "shape": [33, 784], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "do not match shape",
        ),
    ];
    for (uri, body, status, message) in cases {
        let r = post(examples(), uri, body).await;
        assert_eq!(r.status, status, "{uri}: {:?}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(message),
            "{uri}: expected '{message}' in '{error}'"
        );
    }
    let r = get(examples(), "/no/such/route").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| runtime("examples/models")).clone();
    let small = app(
        rt,
        HttpConfig {
            max_body_bytes: 64,
            ..HttpConfig::default()
        },
    );
    let r = post(
        small.clone(),
        "/v2/models/mixed/infer",
        mixed_request().to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit of 64 bytes"));
    // A stream without Content-Length is cut at the limit too.
    let chunks = futures_stream(vec![vec![b' '; 40], vec![b' '; 40]]);
    let r = call(
        small,
        Request::post("/v2/models/mixed/infer")
            .body(Body::from_stream(chunks))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    struct Chunks(std::vec::IntoIter<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next().map(|c| Ok(bytes::Bytes::from(c))))
        }
    }
    Chunks(chunks.into_iter())
}

#[tokio::test]
async fn broken_repository_reports_reasons_and_serves_the_rest() {
    let router = app(runtime("tests/data/broken_models"), HttpConfig::default());
    let r = post(router.clone(), "/v2/repository/index", "").await;
    let rows = r.json();
    let state = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state("good")["state"], "READY");
    assert_eq!(state("corrupt")["state"], "UNAVAILABLE");
    assert!(state("badconfig")["reason"]
        .as_str()
        .unwrap()
        .contains("config.pbtxt: line"));
    assert_eq!(
        get(router.clone(), "/v2/health/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = get(router.clone(), "/v2/models/badconfig").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = post(
        router,
        "/v2/models/good/infer",
        json!({"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.json()["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]));
}

fn explicit(load: &[&str]) -> Router {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let config = runtime_config(repository)
        .queue_capacity(16)
        .lifecycle(sluice_runtime::LifecycleConfig {
            mode: sluice_runtime::ControlMode::Explicit,
            startup_models: load.iter().map(|&m| m.to_owned()).collect(),
            ..sluice_runtime::LifecycleConfig::default()
        })
        .build();
    let rt = Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap();
    app(rt, HttpConfig::default())
}

fn state_of(index: &Value, name: &str) -> (String, String) {
    let row = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {index}"));
    (
        row["state"].as_str().unwrap().to_owned(),
        row["reason"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn repository_load_unload_and_index_states() {
    let app = explicit(&["mlp"]);
    let index = post(app.clone(), "/v2/repository/index", "").await.json();
    assert_eq!(state_of(&index, "mlp").0, "READY");
    assert_eq!(
        state_of(&index, "digits"),
        ("UNAVAILABLE".into(), "not loaded".into())
    );
    let r = get(app.clone(), "/v2/models/digits/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    let r = post(app.clone(), "/v2/repository/models/digits/load", "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = get(app.clone(), "/v2/models/digits/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    let index = post(app.clone(), "/v2/repository/index", r#"{"ready": true}"#)
        .await
        .json();
    let names: Vec<_> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("digits"), json!("mlp")]);
    assert!(index[0]["memory_bytes"].as_u64().unwrap() > 0);

    let r = post(
        app.clone(),
        "/v2/repository/models/digits/unload",
        r#"{"parameters": {"unload_dependents": true}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let index = post(app.clone(), "/v2/repository/index", "").await.json();
    assert_eq!(
        state_of(&index, "digits"),
        ("UNAVAILABLE".into(), "unloaded".into())
    );
    let r = post(app.clone(), "/v2/models/digits/infer", "{}").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["error"].as_str().unwrap().contains("unloaded"));
}

#[tokio::test]
async fn repository_bad_requests() {
    let app = explicit(&[]);
    let cases = [
        (
            "/v2/repository/models/..%2Fx/load",
            "",
            StatusCode::BAD_REQUEST,
            "not a valid model name",
        ),
        (
            "/v2/repository/models/%2Fetc/load",
            "",
            StatusCode::BAD_REQUEST,
            "not a valid model name",
        ),
        (
            "/v2/repository/models/nope/load",
            "",
            StatusCode::NOT_FOUND,
            "no model 'nope'",
        ),
        (
            "/v2/repository/models/nope/unload",
            "",
            StatusCode::NOT_FOUND,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            "/v2/repository/models/mlp/load",
            "{",
            StatusCode::BAD_REQUEST,
            "invalid load request",
        ),
        (
            "/v2/repository/models/mlp/load",
            r#"{"parameters": {"config": 3}}"#,
            StatusCode::BAD_REQUEST,
            "must be a JSON string",
        ),
        (
            "/v2/repository/models/mlp/load",
            r#"{"parameters": {"config": "{\"max_batch_size\": -1}"}}"#,
            StatusCode::BAD_REQUEST,
            "max_batch_size must be >= 0",
        ),
        (
            "/v2/repository/models/mlp/unload",
            r#"{"parameters": {"unload_dependents": "yes"}}"#,
            StatusCode::BAD_REQUEST,
            "must be a boolean",
        ),
        (
            "/v2/repository/index",
            r#"{"ready": 1}"#,
            StatusCode::BAD_REQUEST,
            "invalid index request",
        ),
    ];
    for (uri, body, status, expect) in cases {
        let r = post(app.clone(), uri, body).await;
        assert_eq!(r.status, status, "{uri} {body}: {:?}", r.body);
        let message = r.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(expect), "{uri} {body}: {message}");
    }
    // None of it loaded anything.
    let index = post(app.clone(), "/v2/repository/index", r#"{"ready": true}"#)
        .await
        .json();
    assert_eq!(index, json!([]));
}

#[tokio::test]
async fn load_and_unload_need_explicit_mode() {
    let r = post(examples(), "/v2/repository/models/mlp/unload", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("explicit"));
    let r = get(examples(), "/v2/models/mlp/ready").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The mlp's answer to `x`, decoded from a binary response body.
fn probabilities(r: &Reply) -> Vec<f32> {
    let n: usize = r.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    r.body[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn raw_and_compressed_requests_and_compressed_responses_agree() {
    use std::io::{Read, Write};
    let x: Vec<u8> = (0..784)
        .flat_map(|i| (i as f32 / 392.0 - 1.0).to_le_bytes())
        .collect();
    // Triton's raw binary request: the body is the one input.
    let raw = call(
        examples(),
        Request::post("/v2/models/mlp/infer")
            .header("Inference-Header-Content-Length", "0")
            .body(Body::from(x.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK, "{:?}", raw.body);
    let expected = probabilities(&raw);
    assert_eq!(expected.len(), 10);
    // The same as a JSON request, gzip-compressed, answered deflate-compressed.
    let json_body = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
        "data": x.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()}],
        "parameters": {"binary_data_output": true}})
    .to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json_body.as_bytes()).unwrap();
    let r = call(
        examples(),
        Request::post("/v2/models/mlp/infer")
            .header("Content-Encoding", "gzip")
            .header("Accept-Encoding", "deflate")
            .body(Body::from(gz.finish().unwrap()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-encoding"], "deflate");
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(&r.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    let inflated = Reply {
        status: r.status,
        headers: r.headers,
        body: plain.into(),
    };
    assert_eq!(probabilities(&inflated), expected);
    // A raw request to a model with several inputs is refused.
    let r = call(
        examples(),
        Request::post("/v2/models/mixed/infer")
            .header("Inference-Header-Content-Length", "0")
            .body(Body::from(vec![0u8; 16]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("Raw request must only have 1 input"));
}

#[tokio::test]
async fn listed_outputs_are_binary_only_when_they_ask() {
    let mut request = mixed_request();
    request["parameters"] = json!({"binary_data_output": true});
    request["outputs"] =
        json!([{"name": "sum"}, {"name": "h2", "parameters": {"binary_data": true}}]);
    let r = post(examples(), "/v2/models/mixed/infer", request.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let n: usize = r.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let meta: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(meta["outputs"][0]["data"], json!([1.5, 1.0, 5.0, -1.0]));
    assert_eq!(meta["outputs"][1]["parameters"]["binary_data_size"], 8);
    assert_eq!(r.body.len() - n, 8);
}

#[tokio::test]
async fn load_bodies_obey_max_body_bytes_and_framework_errors_are_json() {
    // Over axum's default 2 MiB, under --max-body-bytes: read (and then refused for
    // what it says, not for its size).
    let big = format!("{{\"parameters\": {{\"x\": \"{}\"}}}}", "A".repeat(3 << 20));
    let r = post(explicit(&[]), "/v2/repository/models/mlp/load", big.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown load parameter 'x'"));
    // Over --max-body-bytes: a JSON 413.
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| runtime("examples/models")).clone();
    let small = app(
        rt,
        HttpConfig {
            max_body_bytes: 1 << 20,
            ..HttpConfig::default()
        },
    );
    for uri in [
        "/v2/repository/models/mlp/load",
        "/v2/repository/index",
        "/v2/logging",
    ] {
        let r = post(small.clone(), uri, big.clone()).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert!(r.json()["error"].is_string(), "{uri}");
    }
    // axum's own rejections (405, a bad path) answer JSON too.
    let r = get(examples(), "/v2/models/mlp/infer").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json()["error"].is_string());
    assert_eq!(r.headers["content-type"], "application/json");
}
