//! The profiler against a backend whose run time is known by construction: each
//! run sleeps `FIXED + PER_ROW × rows`, so every figure has a floor it cannot beat
//! on any machine, and a ceiling it stays under with a wide margin.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Backend, Instance, InstanceOptions, LoadSpec, LoadedModel, Result as CoreResult, Tensor,
};

use super::measure::{batch_sizes, measure, Settings};

const FIXED: Duration = Duration::from_millis(4);
const PER_ROW: Duration = Duration::from_millis(1);

/// A backend called `name` whose models' instances are each a new `I`.
struct TestBackend<I> {
    name: &'static str,
    instance: PhantomData<fn() -> I>,
}

fn backend<I: Instance + Default + 'static>(name: &'static str) -> Arc<TestBackend<I>> {
    Arc::new(TestBackend {
        name,
        instance: PhantomData,
    })
}

impl<I: Instance + Default + 'static> Backend for TestBackend<I> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn load(&self, _spec: &LoadSpec<'_>) -> CoreResult<Arc<dyn LoadedModel>> {
        Ok(Arc::new(TestModel::<I>(PhantomData)))
    }
}

struct TestModel<I>(PhantomData<fn() -> I>);

impl<I: Instance + Default + 'static> LoadedModel for TestModel<I> {
    fn instance(&self, _options: &InstanceOptions) -> CoreResult<Box<dyn Instance>> {
        Ok(Box::<I>::default())
    }
}

#[derive(Default)]
struct SleepyInstance;

impl Instance for SleepyInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> CoreResult<Vec<Tensor>> {
        let rows = inputs[0].shape[0];
        std::thread::sleep(FIXED + PER_ROW * rows as u32);
        Ok(inputs
            .into_iter()
            .map(|t| Tensor {
                name: "y".into(),
                ..t
            })
            .collect())
    }
}

/// Refuses any `ids` value but 0 and 1 (as a model with a vocabulary of 2, e.g. a
/// transformer's token type ids, refuses the random values the profiler sends
/// otherwise); keeps the rows of the last run it saw.
#[derive(Default)]
struct Picky;

static PICKY_ROWS: std::sync::Mutex<Vec<Vec<i64>>> = std::sync::Mutex::new(Vec::new());

impl Instance for Picky {
    fn run(&mut self, inputs: Vec<Tensor>) -> CoreResult<Vec<Tensor>> {
        let t = &inputs[0];
        let values: Vec<i64> = t
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if let Some(v) = values.iter().find(|v| !matches!(v, 0 | 1)) {
            return Err(sluice_core::Error::invalid(format!(
                "ids: {v} is out of range"
            )));
        }
        *PICKY_ROWS.lock().unwrap() = values.chunks(t.shape[1]).map(<[i64]>::to_vec).collect();
        Ok(vec![Tensor {
            name: "y".into(),
            ..t.clone()
        }])
    }
}

/// A version 1.0 `.npy` file of little-endian int64 values.
fn write_npy_i64(path: &Path, shape: &[usize], values: &[i64]) {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let mut header = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(" ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// A model folder `name` with a version whose file the test backends never read.
fn model(dir: &Path, name: &str, config: &str) {
    let folder = dir.join(name);
    std::fs::create_dir_all(folder.join("1")).unwrap();
    std::fs::write(folder.join("1").join("model.onnx"), b"not read").unwrap();
    std::fs::write(folder.join("config.pbtxt"), config).unwrap();
}

fn repository(dir: &Path) {
    model(
        dir,
        "picky",
        r#"name: "picky"
backend: "picky"
max_batch_size: 4
input [{ name: "ids" data_type: TYPE_INT64 dims: [-1] }]
output [{ name: "y" data_type: TYPE_INT64 dims: [-1] }]
"#,
    );
    model(
        dir,
        "sleepy",
        r#"name: "sleepy"
backend: "sleepy"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]
instance_group [{ count: 1 }]
parameters: { key: "accuracy" value: { string_value: "0.5" } }
"#,
    );
}

fn runtime(dir: &Path) -> sluice_runtime::Runtime {
    let config = sluice_runtime::RuntimeConfig {
        repository: dir.to_path_buf(),
        repository_options: sluice_runtime::RepositoryOptions::default(),
        default_backend: "sleepy".into(),
        intra_op_threads: 1,
        queue_capacity: 64,
        strict_readiness: false,
        lifecycle: sluice_runtime::LifecycleConfig {
            mode: sluice_runtime::ControlMode::Explicit,
            ..sluice_runtime::LifecycleConfig::default()
        },
        execution_gates: None,
        cache: sluice_runtime::CacheConfig::default(),
    };
    sluice_runtime::Runtime::start(
        config,
        sluice_runtime::Backends::new()
            .with(backend::<SleepyInstance>("sleepy"))
            .with(backend::<Picky>("picky")),
    )
    .unwrap()
}

#[test]
fn batch_sizes_are_powers_of_two_up_to_the_maximum() {
    assert_eq!(batch_sizes(&[], 8).unwrap(), [1, 2, 4, 8]);
    assert_eq!(batch_sizes(&[], 6).unwrap(), [1, 2, 4, 6]);
    assert_eq!(batch_sizes(&[], 1).unwrap(), [1]);
    assert_eq!(batch_sizes(&[], 0).unwrap(), [1]);
    assert_eq!(batch_sizes(&[4, 1, 4], 8).unwrap(), [1, 4]);
    assert!(batch_sizes(&[9], 8).is_err());
    assert!(batch_sizes(&[2], 0).is_err());
}

#[test]
fn a_model_of_known_latency_is_profiled_within_tolerance_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    repository(dir.path());
    let rt = runtime(dir.path());
    let settings = Settings {
        batch_sizes: Vec::new(),
        instances: vec![1, 2],
        max_requests: 12,
        seconds_per_point: 0.05,
        shapes: Default::default(),
        files: Default::default(),
        hardware_class: "test".into(),
    };
    let p = measure(&rt, "sleepy", &settings).unwrap();
    rt.shutdown();
    assert_eq!(p.model, "sleepy");
    assert_eq!(p.accuracy, Some(0.5));
    assert_eq!(
        p.batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    for b in &p.batches {
        let want = (FIXED + PER_ROW * b.batch_size).as_secs_f64() * 1e3;
        let p50 = b.latency_ms.p50;
        // A sleep is never shorter; the path around it costs well under a few ms.
        assert!(
            p50 >= want,
            "batch {}: p50 {p50} ms < {want} ms",
            b.batch_size
        );
        assert!(
            p50 < want * 1.5 + 5.0,
            "batch {}: p50 {p50} ms",
            b.batch_size
        );
        assert!(b.latency_ms.p99.unwrap() >= p50);
        // One instance: never more rows per second than one run allows.
        let tp = b.throughput_per_s.unwrap();
        assert!(
            tp <= f64::from(b.batch_size) * 1e3 / want * 1.01,
            "batch {}: {tp}",
            b.batch_size
        );
        assert!(tp > 0.0);
    }
    // Two instances run twice as many batches at once (sleeps overlap on any machine).
    let one = p.instance_scaling[0].throughput_per_s;
    let two = p.instance_scaling[1].throughput_per_s;
    assert_eq!(p.instance_scaling[1].instances, 2);
    assert!(two > one * 1.3, "1 instance {one}/s, 2 instances {two}/s");
    // (serde_json reads floats to within an ulp, so the figures are compared so.)
    let text = serde_json::to_string(&p).unwrap();
    let again = sluice_autoscale::profile::Profile::from_json(&text).unwrap();
    assert_eq!(again.batches.len(), p.batches.len());
    for (a, b) in again.batches.iter().zip(&p.batches) {
        assert_eq!(a.batch_size, b.batch_size);
        assert!((a.latency_ms.p50 / b.latency_ms.p50 - 1.0).abs() < 1e-12);
    }
    assert_eq!(again.instance_scaling.len(), 2);
    assert_eq!(
        (again.model.as_str(), again.memory_bytes),
        ("sleepy", p.memory_bytes)
    );
    let table = super::report::table(&p);
    assert!(
        table.contains("rows/s") && table.contains("instances"),
        "{table}"
    );
}

#[test]
fn inputs_from_files_are_sent_row_by_row_in_turn_and_checked_against_the_config() {
    let dir = tempfile::tempdir().unwrap();
    repository(dir.path());
    let rt = runtime(dir.path());
    let npy = dir.path().join("ids.npy");
    write_npy_i64(&npy, &[3, 2], &[0, 1, 1, 0, 1, 1]);
    let settings = |files: &[(&str, &Path)], shapes: &[(&str, usize)]| Settings {
        batch_sizes: vec![1, 4],
        instances: Vec::new(),
        max_requests: 6,
        seconds_per_point: 0.02,
        shapes: shapes
            .iter()
            .map(|(n, d)| (n.to_string(), vec![*d]))
            .collect(),
        files: files
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_path_buf()))
            .collect(),
        hardware_class: "test".into(),
    };
    // The flag: NAME=FILE, both parts required.
    let parsed = sluice_bench::parse_file(&format!("ids={}", npy.display())).unwrap();
    assert_eq!(parsed, ("ids".to_owned(), npy.clone()));
    for bad in ["ids", "=x.npy", "ids="] {
        let e = sluice_bench::parse_file(bad).unwrap_err();
        assert!(e.contains("expected NAME=FILE.npy"), "{bad}: {e}");
    }
    // Random ids (0..16) are refused by the model: the profile says why.
    let e = measure(&rt, "picky", &settings(&[], &[("ids", 2)])).unwrap_err();
    assert!(format!("{e:#}").contains("out of range"), "{e:#}");
    // From the file: every point is measured; a batch of 4 takes rows 0, 1, 2, 0.
    let p = measure(&rt, "picky", &settings(&[("ids", &npy)], &[])).unwrap();
    assert_eq!(
        p.batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
        [1, 4]
    );
    assert_eq!(
        *PICKY_ROWS.lock().unwrap(),
        [vec![0, 1], vec![1, 0], vec![1, 1], vec![0, 1]]
    );
    // Files that do not fit the input are refused, naming the flag and the reason.
    let floats = dir.path().join("floats.npy");
    let mut f = std::fs::read(&npy).unwrap();
    let at = f.windows(3).position(|w| w == b"<i8").unwrap();
    f[at..at + 3].copy_from_slice(b"<f8");
    std::fs::write(&floats, f).unwrap();
    let scalar = dir.path().join("scalar.npy");
    write_npy_i64(&scalar, &[], &[1]);
    let wide = dir.path().join("wide.npy");
    write_npy_i64(&wide, &[1, 2, 2], &[0, 1, 1, 0]);
    for (name, path, why) in [
        (
            "ids",
            floats.as_path(),
            "holds FP64 values, the input is INT64",
        ),
        ("ids", scalar.as_path(), "is a scalar"),
        ("ids", wide.as_path(), "the input takes rows of [-1]"),
        (
            "nope",
            npy.as_path(),
            "the model has no input 'nope' (inputs: ids)",
        ),
    ] {
        let e = measure(&rt, "picky", &settings(&[(name, path)], &[])).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{name}: {e:#}");
    }
    rt.shutdown();
}
