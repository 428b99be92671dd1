//! The dataflow executor through a real runtime: the example MLP (tract) and the
//! built-in steps (image, softmax, top-k, argmax) as composing models, no Python.
//! Steps that must be held at a known moment run behind execution gates (a named
//! pipe per model, one byte per run; see `crate::gate`), so no test hopes that a
//! model is slow: every wait below is for a state the test itself brought about,
//! polled with a generous bound that only limits how long a broken build hangs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_backend_tract::TractBackend;
use sluice_core::{DataType, ErrorKind, InferRequest, Tensor};

use crate::{Backends, Runtime};

const CLASSES: usize = 10;
const FEATURES: usize = 784;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

/// A repository under construction.
struct Repo {
    dir: tempfile::TempDir,
    gates: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().unwrap(),
            gates: tempfile::tempdir().unwrap(),
        }
    }

    fn model(&self, name: &str, config: &str) -> &Repo {
        let folder = self.dir.path().join(name);
        std::fs::create_dir_all(folder.join("1")).unwrap();
        std::fs::write(
            folder.join("config.pbtxt"),
            format!("name: \"{name}\"\n{config}"),
        )
        .unwrap();
        self
    }

    /// A copy of the example MLP (784 → 10, tract), one instance.
    fn mlp(&self, name: &str) -> &Repo {
        let config = std::fs::read_to_string(examples().join("mlp/config.pbtxt"))
            .unwrap()
            .replace("name: \"mlp\"\n", "")
            .replace("count: 2", "count: 1");
        self.model(name, &config);
        std::fs::copy(
            examples().join("mlp/1/model.onnx"),
            self.dir.path().join(name).join("1/model.onnx"),
        )
        .unwrap();
        self
    }

    /// A built-in post-processing step over `[CLASSES]` scores.
    fn post(&self, name: &str, kind: &str, outputs: &str) -> &Repo {
        self.model(
            name,
            &format!(
                "backend: \"sluice_postprocess\"\nmax_batch_size: 8\n\
                 input [ {{ name: \"x\", data_type: TYPE_FP32, dims: [ {CLASSES} ] }} ]\n\
                 output [ {outputs} ]\n\
                 parameters {{ key: \"kind\" value: {{ string_value: \"{kind}\" }} }}\n"
            ),
        )
    }

    /// Every run of `model` waits for one byte written to the returned gate.
    fn gate(&self, model: &str) -> Gate {
        let path = self.gates.path().join(model);
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        Gate(path)
    }

    fn start(&self, queue_capacity: usize) -> Runtime {
        // Built here, not with `sluice_test_support` (whose config type is that of
        // the non-test build of this crate).
        let config = crate::RuntimeConfig {
            repository: self.dir.path().to_owned(),
            repository_options: crate::RepositoryOptions::default(),
            default_backend: "tract".to_owned(),
            intra_op_threads: 1,
            queue_capacity,
            strict_readiness: true,
            lifecycle: crate::LifecycleConfig::default(),
            execution_gates: Some(self.gates.path().to_owned()),
            cache: crate::CacheConfig::None,
        };
        let mut backends = Backends::new().with(Arc::new(TractBackend::new()));
        for b in sluice_backend_builtin::backends() {
            backends = backends.with(b);
        }
        Runtime::start(config, backends).unwrap()
    }
}

/// The test's end of a model's execution gate.
struct Gate(PathBuf);

impl Gate {
    /// Lets `runs` more runs of the model go.
    fn release(&self, runs: usize) {
        // The runtime holds the pipe open read-write: opening our end never blocks.
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.0)
            .unwrap();
        pipe.write_all(&vec![b'1'; runs]).unwrap();
    }
}

fn ensemble(inputs: &str, outputs: &str, steps: &str, extra: &str) -> String {
    format!(
        "platform: \"ensemble\"\nmax_batch_size: 8\ninput [ {inputs} ]\noutput [ {outputs} ]\n\
         ensemble_scheduling {{ {extra} step [ {steps} ] }}\n"
    )
}

const MLP_IN: &str = "{ name: \"IN\", data_type: TYPE_FP32, dims: [ 784 ] }";

fn step(model: &str, inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> String {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{{ key: \"{k}\" value: \"{v}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{ model_name: \"{model}\" model_version: -1 input_map [ {} ] output_map [ {} ] }}",
        map(inputs),
        map(outputs)
    )
}

/// `rows` distinct rows of MLP input.
fn features(rows: usize) -> Vec<f32> {
    (0..rows * FEATURES)
        .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.3 * (i / FEATURES) as f32)
        .collect()
}

fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> Tensor {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(name, DataType::F32, shape, Bytes::from(data)).unwrap()
}

fn request(inputs: Vec<Tensor>) -> InferRequest {
    InferRequest {
        inputs,
        ..InferRequest::default()
    }
}

fn mlp_request(name: &str, rows: usize) -> InferRequest {
    request(vec![f32_tensor(
        name,
        vec![rows, FEATURES],
        &features(rows),
    )])
}

fn output<'a>(outputs: &'a [Tensor], name: &str) -> &'a Tensor {
    outputs
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {outputs:?}"))
}

fn floats(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.datatype, DataType::F32, "{}", t.name);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ints(t: &Tensor) -> Vec<i64> {
    assert_eq!(t.datatype, DataType::I64, "{}", t.name);
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn stats(rt: &Runtime, model: &str) -> Arc<crate::PoolStats> {
    Arc::clone(&rt.stats(Some(model), None).unwrap()[0].stats)
}

fn executions(rt: &Runtime, model: &str) -> u64 {
    stats(rt, model).executions.load(Ordering::Relaxed)
}

/// Waits until `cond` holds (a state the test caused; the bound only stops a hang).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(tokio::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Softmax of each row of `CLASSES` scores, in f64.
fn softmax(scores: &[f32]) -> Vec<f64> {
    scores
        .chunks_exact(CLASSES)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / sum)
        })
        .collect()
}

/// Indices of each row's `k` largest, ties lower index first.
fn top(values: &[f64], k: usize) -> Vec<i64> {
    values
        .chunks_exact(CLASSES)
        .flat_map(|row| {
            let mut ix: Vec<usize> = (0..CLASSES).collect();
            ix.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            ix.into_iter().take(k).map(|i| i as i64)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_with_a_branch_equals_its_steps_run_one_by_one() {
    let repo = Repo::new();
    repo.mlp("mlp")
        .post(
            "soft",
            "softmax",
            "{ name: \"y\", data_type: TYPE_FP32, dims: [ 10 ] }",
        )
        .post(
            "top3",
            "topk",
            "{ name: \"values\", data_type: TYPE_FP32, dims: [ 3 ] }, \
             { name: \"classes\", data_type: TYPE_INT64, dims: [ 3 ] }",
        )
        .post(
            "best",
            "argmax",
            "{ name: \"index\", data_type: TYPE_INT64, dims: [ 1 ] }",
        );
    // mlp → soft → top3, and mlp → best beside them (a branch off `logits`).
    repo.model(
        "scores",
        &ensemble(
            MLP_IN,
            "{ name: \"PROBS\", data_type: TYPE_FP32, dims: [ 10 ] }, \
             { name: \"TOP_VALUES\", data_type: TYPE_FP32, dims: [ 3 ] }, \
             { name: \"TOP_CLASSES\", data_type: TYPE_INT64, dims: [ 3 ] }, \
             { name: \"BEST\", data_type: TYPE_INT64, dims: [ 1 ] }",
            &[
                step("mlp", &[("input", "IN")], &[("probabilities", "logits")]),
                step("soft", &[("x", "logits")], &[("y", "PROBS")]),
                step(
                    "top3",
                    &[("x", "PROBS")],
                    &[("values", "TOP_VALUES"), ("classes", "TOP_CLASSES")],
                ),
                step("best", &[("x", "logits")], &[("index", "BEST")]),
            ]
            .join(", "),
            "",
        ),
    );
    let rt = repo.start(64);
    let rows = 3;
    // The reference: the first step alone, the rest computed here.
    let alone = rt
        .infer("mlp", None, mlp_request("input", rows))
        .await
        .unwrap();
    let logits = floats(&alone.outputs[0]);
    let probs = softmax(&logits);
    let response = rt
        .infer("scores", None, mlp_request("IN", rows))
        .await
        .unwrap();
    assert_eq!(response.model_name, "scores");
    let got = floats(output(&response.outputs, "PROBS"));
    assert_eq!(output(&response.outputs, "PROBS").shape, vec![rows, 10]);
    for (g, want) in got.iter().zip(&probs) {
        assert!((f64::from(*g) - want).abs() < 1e-6, "{got:?} vs {probs:?}");
    }
    let classes = ints(output(&response.outputs, "TOP_CLASSES"));
    assert_eq!(classes, top(&probs, 3));
    let values = floats(output(&response.outputs, "TOP_VALUES"));
    for (r, (chunk, cls)) in values.chunks(3).zip(classes.chunks(3)).enumerate() {
        for (v, &c) in chunk.iter().zip(cls) {
            let want = probs[r * CLASSES + c as usize];
            assert!(
                (f64::from(*v) - want).abs() < 1e-6,
                "row {r}: {v} vs {want}"
            );
        }
    }
    let best = ints(output(&response.outputs, "BEST"));
    assert_eq!(output(&response.outputs, "BEST").shape, vec![rows, 1]);
    assert_eq!(best, top(&probs, 1));
    // Each step ran once, through its own model (its statistics), and the ensemble
    // counted one request.
    for model in ["soft", "top3", "best"] {
        assert_eq!(executions(&rt, model), 1, "{model}");
    }
    assert_eq!(executions(&rt, "mlp"), 2, "the reference run and the step");
    let own = stats(&rt, "scores");
    assert_eq!(own.outcome(crate::Outcome::Success), 1);
    assert_eq!(own.in_flight(), 0);
    // Asking for one output still runs the dataflow and returns only it.
    let mut one = mlp_request("IN", 1);
    one.outputs = vec![sluice_core::RequestedOutput {
        name: "BEST".into(),
    }];
    let response = rt.infer("scores", None, one).await.unwrap();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "BEST");
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_branches_run_at_once() {
    let repo = Repo::new();
    repo.mlp("left").mlp("right").model(
        "forked",
        &ensemble(
            MLP_IN,
            "{ name: \"L\", data_type: TYPE_FP32, dims: [ 10 ] }, \
             { name: \"R\", data_type: TYPE_FP32, dims: [ 10 ] }",
            &[
                step("left", &[("input", "IN")], &[("probabilities", "L")]),
                step("right", &[("input", "IN")], &[("probabilities", "R")]),
            ]
            .join(", "),
            "",
        ),
    );
    let left = repo.gate("left");
    let right = repo.gate("right");
    let rt = repo.start(64);
    let call = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer("forked", None, mlp_request("IN", 2)).await }
    });
    // Both branches reach their models while neither has run.
    until("both branches are in their models", || {
        stats(&rt, "left").in_flight() == 1 && stats(&rt, "right").in_flight() == 1
    })
    .await;
    // The right branch finishes while the left one is still held: it did not wait
    // for its sibling.
    right.release(1);
    until("the right branch answered", || {
        stats(&rt, "right").outcome(crate::Outcome::Success) == 1
    })
    .await;
    assert_eq!(executions(&rt, "left"), 0);
    assert!(
        !call.is_finished(),
        "the ensemble waits for its other branch"
    );
    left.release(1);
    let response = call.await.unwrap().unwrap();
    assert_eq!(
        floats(output(&response.outputs, "L")),
        floats(output(&response.outputs, "R")),
        "two copies of one model on one input"
    );
    rt.shutdown();
}

/// The image step (exact 4×4, scale 1/255) → softmax over each pixel row.
fn picture_repo() -> Repo {
    let repo = Repo::new();
    repo.model(
        "pixels",
        "backend: \"sluice_image\"\nmax_batch_size: 8\n\
         input [ { name: \"image\", data_type: TYPE_STRING, dims: [ 1 ] } ]\n\
         output [ { name: \"pixels\", data_type: TYPE_FP32, dims: [ 3, 4, 4 ] } ]\n\
         parameters { key: \"resize\" value: { string_value: \"exact\" } }\n",
    )
    .model(
        "rowsoft",
        "backend: \"sluice_postprocess\"\nmax_batch_size: 8\n\
         input [ { name: \"x\", data_type: TYPE_FP32, dims: [ 3, 4, 4 ] } ]\n\
         output [ { name: \"y\", data_type: TYPE_FP32, dims: [ 3, 4, 4 ] } ]\n\
         parameters { key: \"kind\" value: { string_value: \"softmax\" } }\n",
    )
    .model(
        "picture",
        &ensemble(
            "{ name: \"IMAGE\", data_type: TYPE_STRING, dims: [ 1 ] }",
            "{ name: \"OUT\", data_type: TYPE_FP32, dims: [ 3, 4, 4 ] }",
            &[
                step("pixels", &[("image", "IMAGE")], &[("pixels", "p")]),
                step("rowsoft", &[("x", "p")], &[("y", "OUT")]),
            ]
            .join(", "),
            "",
        ),
    );
    repo
}

fn image_request(encoded: &[u8]) -> InferRequest {
    let data = sluice_core::serialize_bytes([encoded]).unwrap();
    request(vec![Tensor::new(
        "IMAGE",
        DataType::Bytes,
        vec![1, 1],
        data,
    )
    .unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_fails_the_request_with_its_name_and_later_steps_never_run() {
    let repo = picture_repo();
    let rt = repo.start(64);
    let err = rt
        .infer("picture", None, image_request(b"these bytes are no image"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ensemble 'picture': step 0 (model 'pixels')"),
        "{text}"
    );
    assert_eq!(executions(&rt, "rowsoft"), 0, "the next step never ran");
    let own = stats(&rt, "picture");
    assert_eq!(own.outcome(crate::Outcome::Invalid), 1);
    assert_eq!(own.in_flight(), 0);

    // The same ensemble answers a real image: a 4×4 PNG, identity resize.
    let pixels: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 17 % 256) as u8).collect();
    let img = image::RgbImage::from_raw(4, 4, pixels.clone()).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let response = rt
        .infer("picture", None, image_request(png.get_ref()))
        .await
        .unwrap();
    let got = floats(&response.outputs[0]);
    // Reference: NCHW of pixel / 255, softmax along each row of 4.
    let nchw: Vec<f64> = (0..3)
        .flat_map(|c| (0..16).map(move |p| (c, p)))
        .map(|(c, p)| f64::from(pixels[p * 3 + c]) / 255.0)
        .collect();
    let want: Vec<f64> = nchw
        .chunks_exact(4)
        .flat_map(|row| {
            let e: Vec<f64> = row.iter().map(|v| v.exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    assert_eq!(executions(&rt, "rowsoft"), 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_request_never_reaches_its_later_steps() {
    let repo = Repo::new();
    repo.mlp("held")
        .post(
            "soft",
            "softmax",
            "{ name: \"y\", data_type: TYPE_FP32, dims: [ 10 ] }",
        )
        .model(
            "chain",
            &ensemble(
                MLP_IN,
                "{ name: \"OUT\", data_type: TYPE_FP32, dims: [ 10 ] }",
                &[
                    step("held", &[("input", "IN")], &[("probabilities", "s")]),
                    step("soft", &[("x", "s")], &[("y", "OUT")]),
                ]
                .join(", "),
                "",
            ),
        );
    let gate = repo.gate("held");
    let rt = repo.start(64);
    let mut req = mlp_request("IN", 1);
    req.timeout = Some(Duration::from_millis(50));
    // The first step is held past the timeout (by the gate, not by luck).
    let err = rt.infer("chain", None, req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.to_string().contains("ensemble 'chain'"), "{err}");
    gate.release(1);
    // A request without a timeout runs after it, through both steps: the first
    // step's held run is over or dropped, and `soft` ran only for this one.
    gate.release(1);
    rt.infer("chain", None, mlp_request("IN", 1)).await.unwrap();
    assert_eq!(executions(&rt, "soft"), 1);
    assert_eq!(stats(&rt, "chain").outcome(crate::Outcome::Timeout), 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_inflight_requests_queues_then_refuses_and_never_deadlocks() {
    let repo = Repo::new();
    repo.mlp("held").model(
        "limited",
        &ensemble(
            MLP_IN,
            "{ name: \"OUT\", data_type: TYPE_FP32, dims: [ 10 ] }",
            &step("held", &[("input", "IN")], &[("probabilities", "OUT")]),
            "max_inflight_requests: 1",
        ),
    );
    let gate = repo.gate("held");
    // The queue capacity also bounds the requests waiting for a step's turn: 2.
    let rt = repo.start(2);
    let send = || {
        let rt = rt.clone();
        tokio::spawn(async move { rt.infer("limited", None, mlp_request("IN", 1)).await })
    };
    let first = send();
    until("the first request runs the step", || {
        stats(&rt, "held").in_flight() == 1
    })
    .await;
    let waiting = [send(), send()];
    // Two more are accepted by the ensemble, and neither reaches the model: they
    // wait for the step's one turn.
    until("two requests wait for a turn", || {
        stats(&rt, "limited").in_flight() == 3
    })
    .await;
    assert_eq!(stats(&rt, "held").in_flight(), 1);
    // The next one is refused at once (no unbounded wait), while the first is held.
    let err = rt
        .infer("limited", None, mlp_request("IN", 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("max_inflight_requests 1"), "{err}");
    assert!(!first.is_finished());
    // Released, all three run one after the other.
    gate.release(3);
    first.await.unwrap().unwrap();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert_eq!(executions(&rt, "held"), 3);
    let own = stats(&rt, "limited");
    assert_eq!(own.outcome(crate::Outcome::Success), 3);
    assert_eq!(own.outcome(crate::Outcome::Rejected), 1);
    assert_eq!(own.in_flight(), 0);
    rt.shutdown();
}
