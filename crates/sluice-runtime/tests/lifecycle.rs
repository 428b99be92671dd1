//! The runtime's lifecycle with the tract backend and the example MLP: control modes,
//! load and unload, carry-over of unchanged versions on reload, and the memory budget
//! (eviction, load on first use). End-to-end behaviour under concurrent clients is in
//! `tests/python/test_repository.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_backend_tract::TractBackend;
use sluice_core::{DataType, ErrorKind, InferRequest, Tensor};
use sluice_runtime::{
    Backends, ControlMode, IndexEntry, LifecycleConfig, LoadOptions, ModelState, Runtime,
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

fn start(repository: &Path, lifecycle: LifecycleConfig) -> Runtime {
    let config = sluice_test_support::runtime_config(repository)
        .queue_capacity(16)
        .lifecycle(lifecycle)
        .build();
    Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap()
}

fn explicit(load: &[&str]) -> LifecycleConfig {
    LifecycleConfig {
        mode: ControlMode::Explicit,
        startup_models: load.iter().map(|&m| m.to_owned()).collect(),
        ..LifecycleConfig::default()
    }
}

fn row(rt: &Runtime, name: &str) -> IndexEntry {
    rt.index()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the index"))
}

/// A repository holding copies of the example MLP under `names`.
fn mlp_copies(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let v1 = dir.path().join(name).join("1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::copy(examples().join("mlp/1/model.onnx"), v1.join("model.onnx")).unwrap();
        let config = std::fs::read_to_string(examples().join("mlp/config.pbtxt"))
            .unwrap()
            .replace("name: \"mlp\"", &format!("name: \"{name}\""));
        std::fs::write(dir.path().join(name).join("config.pbtxt"), config).unwrap();
    }
    dir
}

fn mlp_request() -> InferRequest {
    let zeros = Bytes::from(vec![0u8; 784 * 4]);
    InferRequest {
        inputs: vec![Tensor::new("input", DataType::F32, vec![1, 784], zeros).unwrap()],
        ..InferRequest::default()
    }
}

#[test]
fn explicit_mode_loads_only_what_is_asked() {
    let rt = start(&examples(), explicit(&["mlp"]));
    assert_eq!(row(&rt, "mlp").state, ModelState::Ready);
    assert!(row(&rt, "mlp").memory_bytes.unwrap() > 0);
    assert_eq!(row(&rt, "digits").state, ModelState::Unavailable);
    assert_eq!(row(&rt, "digits").reason, "not loaded");
    assert!(!rt.model_ready("digits", None).unwrap());

    rt.load("digits", &LoadOptions::default()).unwrap();
    assert!(rt.model_ready("digits", None).unwrap());
    rt.unload("digits").unwrap();
    assert_eq!(row(&rt, "digits").reason, "unloaded");
    assert!(!rt.model_ready("digits", None).unwrap());

    let kind = |r: sluice_core::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(rt.load("../mlp", &LoadOptions::default())),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(rt.load("/etc", &LoadOptions::default())),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(rt.load("nope", &LoadOptions::default())),
        ErrorKind::NotFound
    );
    assert_eq!(kind(rt.unload("nope")), ErrorKind::NotFound);
    assert!(rt.index().iter().all(|e| e.name != "nope"));
    assert!(rt.model_ready("mlp", None).unwrap());
}

#[test]
fn load_and_unload_need_explicit_mode() {
    for mode in [ControlMode::None, ControlMode::Poll] {
        let rt = start(
            &examples(),
            LifecycleConfig {
                mode,
                ..LifecycleConfig::default()
            },
        );
        let e = rt.load("mlp", &LoadOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("--model-control-mode explicit"), "{e}");
        assert!(rt.unload("mlp").is_err());
        assert!(rt.model_ready("mlp", None).unwrap());
        rt.shutdown();
    }
}

#[test]
fn reload_carries_over_unchanged_versions_and_reloads_changed_ones() {
    let repo = mlp_copies(&["m"]);
    let rt = start(repo.path(), explicit(&["m"]));
    let first = row(&rt, "m").load_duration.unwrap();
    rt.load("m", &LoadOptions::default()).unwrap();
    // Same config, same file: the very same loaded version (its load time unchanged).
    assert_eq!(row(&rt, "m").load_duration.unwrap(), first);
    // A rewritten file (new modification time) is loaded afresh.
    std::thread::sleep(Duration::from_millis(20));
    let file = repo.path().join("m/1/model.onnx");
    std::fs::write(&file, std::fs::read(&file).unwrap()).unwrap();
    rt.load("m", &LoadOptions::default()).unwrap();
    assert_ne!(row(&rt, "m").load_duration.unwrap(), first);
    // A config override that fails leaves the model serving as it was.
    let bad = LoadOptions {
        config: Some(r#"{"max_batch_size": -1}"#.to_owned()),
        ..LoadOptions::default()
    };
    assert_eq!(
        rt.load("m", &bad).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(row(&rt, "m").state, ModelState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_evicts_least_recently_used_and_reloads_on_first_use() {
    let repo = mlp_copies(&["a", "b", "c"]);
    let rt = start(
        repo.path(),
        LifecycleConfig {
            memory_budget: Some(1),
            ..LifecycleConfig::default()
        },
    );
    // Loading b evicted a, loading c evicted b: the last loaded model stays.
    let ready: Vec<String> = rt
        .index()
        .into_iter()
        .filter(|e| e.state == ModelState::Ready)
        .map(|e| e.name)
        .collect();
    assert_eq!(ready, vec!["c".to_owned()]);
    let evicted = row(&rt, "a");
    assert_eq!(evicted.state, ModelState::Unavailable);
    assert!(
        evicted.reason.contains("memory budget"),
        "{}",
        evicted.reason
    );
    // Evicted models still answer readiness, metadata and config.
    assert!(rt.model_ready("a", None).unwrap());
    assert_eq!(rt.model_metadata("a", None).unwrap().versions, vec![1]);
    assert!(rt.ready());

    // A request to an evicted model waits for its reload, which evicts the idle c.
    let response = rt.infer("a", None, mlp_request()).await.unwrap();
    assert_eq!(response.model_version, 1);
    assert_eq!(response.outputs[0].shape, vec![1, 10]);
    assert_eq!(row(&rt, "a").state, ModelState::Ready);
    assert_eq!(row(&rt, "c").state, ModelState::Unavailable);
    let (used, budget) = rt.memory_usage();
    assert_eq!(budget, Some(1));
    assert_eq!(used, row(&rt, "a").memory_bytes.unwrap());

    // Many concurrent requests across all three: none fails.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let rt = rt.clone();
        let name = ["a", "b", "c"][i % 3];
        tasks.push(tokio::spawn(async move {
            rt.infer(name, None, mlp_request()).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    rt.shutdown();
}

/// The drain's two steps: `begin_drain` turns readiness false while requests are still
/// served; `begin_shutdown` then refuses them as unavailable (HTTP 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_serves_while_not_ready_and_shutdown_refuses() {
    let repo = mlp_copies(&["mlp"]);
    let rt = start(repo.path(), LifecycleConfig::default());
    assert!(rt.ready());
    rt.begin_drain();
    assert!(!rt.ready());
    assert!(rt.live());
    let response = rt.infer("mlp", None, mlp_request()).await.unwrap();
    assert_eq!(response.outputs.len(), 1);
    rt.begin_shutdown();
    assert!(!rt.ready());
    let refused = rt.infer("mlp", None, mlp_request()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unavailable);
    let rt2 = rt.clone();
    tokio::task::spawn_blocking(move || rt2.shutdown())
        .await
        .unwrap();
}

#[test]
fn failed_loads_of_names_outside_the_repository_leave_no_trace() {
    let rt = start(&examples(), explicit(&["mlp"]));
    assert!(rt.ready());
    let entries = rt.index().len();
    let config = r#"{"backend":"tract","input":[{"name":"x","data_type":"TYPE_FP32","dims":[1]}],
        "output":[{"name":"y","data_type":"TYPE_FP32","dims":[1]}]}"#;
    let load = |name: &str, path: &str| {
        rt.load(
            name,
            &LoadOptions {
                config: Some(config.to_owned()),
                files: vec![(path.to_owned(), b"not an onnx file".to_vec())],
            },
        )
        .unwrap_err()
    };
    for i in 0..20 {
        load(&format!("uploaded{i}"), "1/model.onnx");
    }
    // A trailing slash names a folder, not a file: the client's mistake.
    let err = load("slash", "1/");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("'file:1/'"), "{err}");
    for path in ["1//model.onnx", "./1/model.onnx", "1/./model.onnx"] {
        assert_eq!(
            load("odd", path).kind(),
            ErrorKind::InvalidArgument,
            "{path}"
        );
    }
    let err = rt
        .load(
            "nested",
            &LoadOptions {
                config: Some(config.to_owned()),
                files: vec![
                    ("1".to_owned(), Vec::new()),
                    ("1/model.onnx".to_owned(), Vec::new()),
                ],
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        rt.ready(),
        "a failed load of a new name must not make the server not ready"
    );
    assert_eq!(rt.index().len(), entries, "{:?}", rt.index());
    assert!(rt.model_ready("mlp", None).unwrap());
}

#[test]
fn models_loaded_from_files_are_forgotten_on_unload() {
    let rt = start(&examples(), explicit(&[]));
    let entries = rt.index().len();
    let model = std::fs::read(examples().join("mlp/1/model.onnx")).unwrap();
    let json = r#"{"backend":"tract","max_batch_size":8,
        "input":[{"name":"input","data_type":"TYPE_FP32","dims":[784]}],
        "output":[{"name":"probabilities","data_type":"TYPE_FP32","dims":[10]}]}"#;
    rt.load(
        "uploaded",
        &LoadOptions {
            config: Some(json.to_owned()),
            files: vec![("1/model.onnx".to_owned(), model)],
        },
    )
    .unwrap();
    assert!(rt.model_ready("uploaded", None).unwrap());
    rt.unload("uploaded").unwrap();
    assert_eq!(rt.index().len(), entries);
    assert!(rt.ready());
}
