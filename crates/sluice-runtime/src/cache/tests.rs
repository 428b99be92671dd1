use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use sluice_core::DataType;

use super::*;

pub(super) fn t(name: &str, dt: DataType, shape: Vec<usize>, data: &[u8]) -> Tensor {
    Tensor {
        name: name.into(),
        datatype: dt,
        shape,
        data: Bytes::copy_from_slice(data),
    }
}

pub(super) fn probe(inputs: &[Tensor]) -> Probe<'_> {
    Probe {
        model: "m",
        version: 1,
        scope: 7,
        inputs,
    }
}

fn local(size_bytes: u64) -> (LocalStore, Arc<CacheCounters>) {
    let counters = Arc::new(CacheCounters::default());
    let store = LocalStore::new(
        LocalCacheConfig {
            size_bytes,
            ttl: None,
        },
        &counters,
    );
    (store, counters)
}

#[tokio::test]
async fn a_colliding_hash_never_returns_another_answer() {
    let (cache, _) = local(1 << 20);
    let a = vec![t("x", DataType::F32, vec![1], &[1, 0, 0, 0])];
    let b = vec![t("x", DataType::F32, vec![1], &[2, 0, 0, 0])];
    let answer = vec![t("y", DataType::F32, vec![1], &[9, 9, 9, 9])];
    // Store a's answer under b's hash, as a collision would.
    cache
        .put(probe(&b).hash(), Arc::new(Entry::new(probe(&a), &answer)))
        .await;
    let found = cache.get(probe(&b).hash()).await.unwrap();
    assert!(!probe(&b).matches(&found.fingerprint));
    assert!(probe(&a).matches(&found.fingerprint));
}

#[tokio::test]
async fn the_budget_is_never_exceeded() {
    let budget = 64 * 1024;
    let (cache, counters) = local(budget);
    for i in 0u32..2000 {
        let inputs = vec![t("x", DataType::U32, vec![1], &i.to_le_bytes())];
        let outputs = vec![t("y", DataType::U8, vec![300], &[7; 300])];
        let entry = Arc::new(Entry::new(probe(&inputs), &outputs));
        cache.put(probe(&inputs).hash(), entry).await;
        let bytes = cache.entries.weighted_size();
        assert!(bytes <= budget, "{bytes} > {budget} after {i}");
    }
    assert!(
        cache.entries.entry_count() > 10,
        "the cache should hold entries"
    );
    assert!(counters.evictions.load(Ordering::Relaxed) > 0);
}

fn answer(n: u8) -> Arc<Entry> {
    let inputs = vec![t("x", DataType::U8, vec![1], &[n])];
    Arc::new(Entry::new(probe(&inputs), &inputs))
}

/// A run held until `release` fires; counts how many runs started.
async fn held(
    runs: &AtomicUsize,
    release: tokio::sync::oneshot::Receiver<()>,
    result: std::result::Result<Arc<Entry>, &'static str>,
) -> std::result::Result<(Arc<Entry>, ()), &'static str> {
    runs.fetch_add(1, Ordering::SeqCst);
    let _ = release.await;
    result.map(|e| (e, ()))
}

/// Waits until the flight map holds `key` (the leader entered its run).
async fn until_in_flight(flights: &Flights) {
    while flights.len() == 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_waiter_gets_the_leaders_answer_without_running() {
    let flights = Arc::new(Flights::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (go, release) = tokio::sync::oneshot::channel();
    let leader = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            matches!(
                flights
                    .run(1, None, || held(&runs, release, Ok(answer(5))))
                    .await,
                Flight::Led(Ok(_))
            )
        })
    };
    until_in_flight(&flights).await;
    let waiter = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            let (_, never) = tokio::sync::oneshot::channel::<()>();
            match flights
                .run(1, None, || held(&runs, never, Ok(answer(0))))
                .await
            {
                Flight::Joined(e) => e.fingerprint.inputs[0].data[0],
                _ => 0,
            }
        })
    };
    tokio::task::yield_now().await;
    go.send(()).unwrap();
    assert!(leader.await.unwrap());
    assert_eq!(waiter.await.unwrap(), 5);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(flights.len(), 0);
}

#[tokio::test]
async fn a_failed_leader_does_not_fail_its_waiters() {
    let flights = Arc::new(Flights::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (go, release) = tokio::sync::oneshot::channel();
    let leader = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            matches!(
                flights
                    .run(1, None, || held(&runs, release, Err("engine failed")))
                    .await,
                Flight::Led(Err("engine failed"))
            )
        })
    };
    until_in_flight(&flights).await;
    let waiter = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            let (now, ready) = tokio::sync::oneshot::channel();
            now.send(()).unwrap();
            matches!(
                flights
                    .run(1, None, || held(&runs, ready, Ok(answer(6))))
                    .await,
                Flight::Led(Ok(_))
            )
        })
    };
    // The waiter is parked on the leader's run (it has not run its own).
    tokio::task::yield_now().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    go.send(()).unwrap();
    assert!(leader.await.unwrap(), "the leader gets its own error");
    assert!(waiter.await.unwrap(), "the waiter leads a new run");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(flights.len(), 0);
}

#[tokio::test]
async fn a_dropped_leader_hands_over_to_a_waiter() {
    let flights = Arc::new(Flights::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (_never_sent, release) = tokio::sync::oneshot::channel();
    let leader = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            let _ = flights
                .run(1, None, || held(&runs, release, Ok(answer(1))))
                .await;
        })
    };
    until_in_flight(&flights).await;
    let waiter = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            let (now, ready) = tokio::sync::oneshot::channel();
            now.send(()).unwrap();
            matches!(
                flights
                    .run(1, None, || held(&runs, ready, Ok(answer(2))))
                    .await,
                Flight::Led(Ok(_))
            )
        })
    };
    tokio::task::yield_now().await;
    // The client of the leader goes away.
    leader.abort();
    assert!(waiter.await.unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_waiter_stops_at_its_deadline_and_the_run_goes_on() {
    let flights = Arc::new(Flights::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (go, release) = tokio::sync::oneshot::channel();
    let leader = {
        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
        tokio::spawn(async move {
            matches!(
                flights
                    .run(1, None, || held(&runs, release, Ok(answer(3))))
                    .await,
                Flight::Led(Ok(_))
            )
        })
    };
    until_in_flight(&flights).await;
    // The leader stays held until the waiter has given up: no timing assumption.
    let deadline = Instant::now() + Duration::from_millis(20);
    let (_, never) = tokio::sync::oneshot::channel::<()>();
    let waited = flights
        .run(1, Some(deadline), || held(&runs, never, Ok(answer(0))))
        .await;
    assert!(matches!(waited, Flight::TimedOut));
    assert!(Instant::now() >= deadline);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the waiter never ran");
    go.send(()).unwrap();
    assert!(leader.await.unwrap(), "the leader's run was not cancelled");
}

#[test]
fn the_identity_follows_files_and_config_not_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("1");
    std::fs::create_dir_all(v1.join("extra")).unwrap();
    std::fs::write(v1.join("model.onnx"), b"weights-a").unwrap();
    std::fs::write(v1.join("extra/data.bin"), b"external").unwrap();
    let config = ModelConfig {
        name: "m".into(),
        ..ModelConfig::default()
    };
    let base = identity(&config, "tract", &v1);
    assert_eq!(base, identity(&config, "tract", &v1), "deterministic");
    // Scheduling does not change the answer.
    let mut scheduled = config.clone();
    scheduled.dynamic_batching = Some(sluice_core::DynamicBatching::default());
    scheduled.instance_group =
        vec![serde_json::from_value(serde_json::json!({"count": 4})).unwrap()];
    assert_eq!(identity(&scheduled, "tract", &v1), base);
    // What may change it does.
    assert_ne!(identity(&config, "onnxruntime", &v1), base);
    let mut batched = config.clone();
    batched.max_batch_size = 8;
    assert_ne!(identity(&batched, "tract", &v1), base);
    std::fs::write(v1.join("extra/data.bin"), b"externaL").unwrap();
    assert_ne!(identity(&config, "tract", &v1), base);
    std::fs::write(v1.join("extra/data.bin"), b"external").unwrap();
    std::fs::write(v1.join("model.onnx"), b"weights-b").unwrap();
    assert_ne!(identity(&config, "tract", &v1), base);
}
