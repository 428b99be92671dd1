//! The response cache through the runtime with the tract backend and the example MLP:
//! hits equal the uncached answer and never run the model, concurrent identical
//! requests run it once, the bypass parameter, and models that do not opt in.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use sluice_backend_tract::TractBackend;
use sluice_core::{CacheControl, DataType, InferRequest, Tensor};
use sluice_runtime::{Backends, CacheConfig, LocalCacheConfig, Runtime};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

/// A repository with the example MLP as `cached` (response cache on) and `plain`.
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("cached", "response_cache { enable: true }\n"),
        ("plain", ""),
    ] {
        let v1 = dir.path().join(name).join("1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::copy(examples().join("mlp/1/model.onnx"), v1.join("model.onnx")).unwrap();
        let config = std::fs::read_to_string(examples().join("mlp/config.pbtxt"))
            .unwrap()
            .replace("name: \"mlp\"", &format!("name: \"{name}\""))
            + extra;
        std::fs::write(dir.path().join(name).join("config.pbtxt"), config).unwrap();
    }
    dir
}

fn start(repository: &Path) -> Runtime {
    let config = sluice_test_support::runtime_config(repository)
        .queue_capacity(64)
        .cache(CacheConfig::Local(LocalCacheConfig {
            size_bytes: 1 << 20,
            ttl: None,
        }))
        .build();
    Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap()
}

fn request(seed: u8, cache: CacheControl) -> InferRequest {
    let data: Vec<u8> = (0..784u32)
        .flat_map(|i| (f32::from(seed) * 0.01 + i as f32 * 0.001).to_le_bytes())
        .collect();
    InferRequest {
        inputs: vec![Tensor::new("input", DataType::F32, vec![1, 784], Bytes::from(data)).unwrap()],
        cache,
        ..InferRequest::default()
    }
}

/// Same names, types and shapes, and FP32 values within 1e-5 (relative) of each other.
fn assert_close(a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.name, x.datatype, &x.shape),
            (&y.name, y.datatype, &y.shape)
        );
        let floats = |t: &Tensor| -> Vec<f32> {
            t.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        for (u, v) in floats(x).into_iter().zip(floats(y)) {
            assert!(
                (u - v).abs() <= 1e-5 * u.abs().max(v.abs()).max(1.0),
                "{u} vs {v}"
            );
        }
    }
}

fn executions(rt: &Runtime, name: &str) -> u64 {
    rt.stats(Some(name), None).unwrap()[0]
        .stats
        .executions
        .load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_equal_the_uncached_answer_and_never_run_the_model() {
    let dir = repository();
    let rt = start(dir.path());
    let uncached = rt
        .infer("plain", None, request(1, CacheControl::Use))
        .await
        .unwrap();
    let miss = rt
        .infer("cached", None, request(1, CacheControl::Use))
        .await
        .unwrap();
    let hit = rt
        .infer("cached", None, request(1, CacheControl::Use))
        .await
        .unwrap();
    // The same model answers a hit with the very bytes it computed.
    assert_eq!(hit.outputs, miss.outputs);
    // Another model with the same weights may run another of tract's batch plans (each
    // picked by a timed measurement at load), whose sums round differently.
    assert_close(&miss.outputs, &uncached.outputs);
    assert_eq!(executions(&rt, "cached"), 1);
    let s = &rt.stats(Some("cached"), None).unwrap()[0].stats;
    assert_eq!(s.cache_hit.get().0, 1);
    assert_eq!(s.cache_miss.get().0, 1);
    assert_eq!(s.success.get().0, 2, "a hit counts as a success");
    assert_eq!(s.rows.load(Ordering::Relaxed), 1, "a hit is no inference");

    // Another input misses; skip and refresh run the model; no_store answers a hit.
    rt.infer("cached", None, request(2, CacheControl::Use))
        .await
        .unwrap();
    assert_eq!(executions(&rt, "cached"), 2);
    rt.infer("cached", None, request(1, CacheControl::Skip))
        .await
        .unwrap();
    assert_eq!(executions(&rt, "cached"), 3);
    rt.infer("cached", None, request(1, CacheControl::NoStore))
        .await
        .unwrap();
    assert_eq!(executions(&rt, "cached"), 3);
    rt.infer("cached", None, request(3, CacheControl::NoStore))
        .await
        .unwrap();
    rt.infer("cached", None, request(3, CacheControl::Use))
        .await
        .unwrap();
    assert_eq!(executions(&rt, "cached"), 5, "no_store stored nothing");
    rt.infer("cached", None, request(1, CacheControl::Refresh))
        .await
        .unwrap();
    assert_eq!(executions(&rt, "cached"), 6);

    // A model that does not opt in never caches.
    for _ in 0..3 {
        rt.infer("plain", None, request(1, CacheControl::Use))
            .await
            .unwrap();
    }
    assert_eq!(executions(&rt, "plain"), 4);
    assert_eq!(
        rt.stats(Some("plain"), None).unwrap()[0]
            .stats
            .cache_hit
            .get()
            .0,
        0
    );
    let cache = rt.cache_stats().await.unwrap();
    let bytes = cache.bytes.unwrap();
    assert!(bytes > 0 && bytes <= 1 << 20, "{cache:?}");
    assert_eq!(cache.budget_bytes, Some(1 << 20));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_identical_requests_run_the_model_once() {
    let dir = repository();
    let rt = start(dir.path());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                rt.infer("cached", None, request(9, CacheControl::Use))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().outputs);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    // Coalesced with the first run or answered after it: never a second run.
    assert_eq!(executions(&rt, "cached"), 1);
    let s = &rt.stats(Some("cached"), None).unwrap()[0].stats;
    assert_eq!(s.cache_hit.get().0 + s.cache_miss.get().0, 16);
    assert_eq!(s.cache_miss.get().0, 1);
    rt.shutdown();
}
