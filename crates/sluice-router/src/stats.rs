//! Triton's statistics extension through the router: one answer for the whole fleet.
//!
//! Key decision: a client of one Triton reads `v2/models/{m}/stats` as "what this
//! endpoint did for the model", so the router asks every replica that holds it and
//! adds the answers up per (model, version): counts and nanoseconds are summed,
//! `last_inference` is the latest, `batch_stats` are merged by batch size and
//! `memory_usage` by (type, id). The means a client derives (ns / count) are then the
//! fleet's means. The same rule serves HTTP (Triton's JSON) and gRPC (the protobuf
//! message).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_proto::inference::{InferStatistics, ModelStatistics, StatisticDuration};

/// Adds `b` into `a` (two model statistics objects of Triton's HTTP JSON).
fn add_json(a: &mut Map<String, Value>, b: &Map<String, Value>) {
    for (k, bv) in b {
        let Some(av) = a.get_mut(k) else {
            a.insert(k.clone(), bv.clone());
            continue;
        };
        match (k.as_str(), &mut *av, bv) {
            ("name" | "version", _, _) => {}
            ("last_inference", Value::Number(x), Value::Number(y)) => {
                let m = x.as_u64().unwrap_or(0).max(y.as_u64().unwrap_or(0));
                *av = Value::from(m);
            }
            (_, Value::Number(x), Value::Number(y)) => {
                *av = match (x.as_u64(), y.as_u64()) {
                    (Some(x), Some(y)) => Value::from(x.saturating_add(y)),
                    _ => Value::from(x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0)),
                };
            }
            (_, Value::Object(x), Value::Object(y)) => add_json(x, y),
            ("batch_stats", Value::Array(x), Value::Array(y)) => {
                merge_rows(x, y, |r| key_of(r, &["batch_size"]));
                x.sort_by_key(|r| r["batch_size"].as_u64().unwrap_or(0));
            }
            ("memory_usage", Value::Array(x), Value::Array(y)) => {
                merge_rows(x, y, |r| key_of(r, &["type", "id"]));
            }
            (_, Value::Array(x), Value::Array(y)) => x.extend(y.iter().cloned()),
            _ => {}
        }
    }
}

fn key_of(row: &Value, fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| row[*f].to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Rows of `y` added into the row of `x` with the same key, or appended.
fn merge_rows(x: &mut Vec<Value>, y: &[Value], key: impl Fn(&Value) -> String) {
    for row in y {
        let k = key(row);
        match x.iter_mut().find(|r| key(r) == k) {
            Some(Value::Object(target)) => {
                if let Value::Object(src) = row {
                    add_json_row(target, src);
                }
            }
            _ => x.push(row.clone()),
        }
    }
}

/// Like [`add_json`], but identity fields of a row (batch size, memory type and id)
/// are kept, not summed.
fn add_json_row(a: &mut Map<String, Value>, b: &Map<String, Value>) {
    let mut b = b.clone();
    for k in ["batch_size", "type", "id"] {
        b.remove(k);
    }
    add_json(a, &b);
}

/// The fleet's answer from the replicas' `{"model_stats": [...]}` bodies.
pub fn merge_json(bodies: &[Value]) -> Value {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut rows: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for body in bodies {
        for row in body["model_stats"].as_array().into_iter().flatten() {
            let Value::Object(row) = row else { continue };
            let key = (
                row.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                row.get("version")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            );
            match rows.get_mut(&key) {
                Some(acc) => add_json(acc, row),
                None => {
                    order.push(key.clone());
                    rows.insert(key, row.clone());
                }
            }
        }
    }
    let list: Vec<Value> = order
        .into_iter()
        .filter_map(|k| rows.remove(&k))
        .map(Value::Object)
        .collect();
    serde_json::json!({ "model_stats": list })
}

fn add_duration(a: &mut Option<StatisticDuration>, b: Option<&StatisticDuration>) {
    if let Some(b) = b {
        let a = a.get_or_insert_with(StatisticDuration::default);
        a.count = a.count.saturating_add(b.count);
        a.ns = a.ns.saturating_add(b.ns);
    }
}

fn add_infer(a: &mut InferStatistics, b: &InferStatistics) {
    add_duration(&mut a.success, b.success.as_ref());
    add_duration(&mut a.fail, b.fail.as_ref());
    add_duration(&mut a.queue, b.queue.as_ref());
    add_duration(&mut a.compute_input, b.compute_input.as_ref());
    add_duration(&mut a.compute_infer, b.compute_infer.as_ref());
    add_duration(&mut a.compute_output, b.compute_output.as_ref());
    add_duration(&mut a.cache_hit, b.cache_hit.as_ref());
    add_duration(&mut a.cache_miss, b.cache_miss.as_ref());
}

fn add_proto(a: &mut ModelStatistics, b: &ModelStatistics) {
    a.last_inference = a.last_inference.max(b.last_inference);
    a.inference_count = a.inference_count.saturating_add(b.inference_count);
    a.execution_count = a.execution_count.saturating_add(b.execution_count);
    if let Some(bi) = &b.inference_stats {
        add_infer(a.inference_stats.get_or_insert_with(Default::default), bi);
    }
    for bb in &b.batch_stats {
        match a
            .batch_stats
            .iter_mut()
            .find(|x| x.batch_size == bb.batch_size)
        {
            Some(x) => {
                add_duration(&mut x.compute_input, bb.compute_input.as_ref());
                add_duration(&mut x.compute_infer, bb.compute_infer.as_ref());
                add_duration(&mut x.compute_output, bb.compute_output.as_ref());
            }
            None => a.batch_stats.push(*bb),
        }
    }
    a.batch_stats.sort_by_key(|x| x.batch_size);
    for bm in &b.memory_usage {
        match a
            .memory_usage
            .iter_mut()
            .find(|x| x.r#type == bm.r#type && x.id == bm.id)
        {
            Some(x) => x.byte_size = x.byte_size.saturating_add(bm.byte_size),
            None => a.memory_usage.push(bm.clone()),
        }
    }
    for (k, v) in &b.response_stats {
        a.response_stats.entry(k.clone()).or_insert_with(|| *v);
    }
}

/// The fleet's answer from the replicas' `ModelStatistics` lists.
pub fn merge_proto(answers: Vec<Vec<ModelStatistics>>) -> Vec<ModelStatistics> {
    let mut out: Vec<ModelStatistics> = Vec::new();
    for list in answers {
        for m in list {
            match out
                .iter_mut()
                .find(|x| x.name == m.name && x.version == m.version)
            {
                Some(acc) => add_proto(acc, &m),
                None => out.push(m),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_proto::inference::{InferBatchStatistics, MemoryUsage};

    fn stats(count: u64, ns: u64, last: u64, batches: &[(u64, u64)], mem: u64) -> Value {
        json!({"model_stats": [{
            "name": "m", "version": "1", "last_inference": last,
            "inference_count": count, "execution_count": count,
            "inference_stats": {
                "success": {"count": count, "ns": ns},
                "fail": {"count": 0, "ns": 0},
                "queue": {"count": count, "ns": ns / 10},
            },
            "batch_stats": batches.iter().map(|&(b, n)| json!({
                "batch_size": b,
                "compute_infer": {"count": n, "ns": n * 100},
            })).collect::<Vec<_>>(),
            "memory_usage": [{"type": "CPU", "id": 0, "byte_size": mem}],
        }]})
    }

    #[test]
    fn replicas_statistics_add_up_per_model_and_version() {
        let a = stats(3, 3000, 50, &[(1, 3)], 100);
        let mut b = stats(5, 10_000, 70, &[(1, 1), (4, 1)], 100);
        b["model_stats"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "other", "version": "2", "inference_count": 1}));
        let m = merge_json(&[a, b]);
        let rows = m["model_stats"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(
            (r["name"].as_str(), r["version"].as_str()),
            (Some("m"), Some("1"))
        );
        assert_eq!(r["inference_count"], 8);
        assert_eq!(r["execution_count"], 8);
        assert_eq!(r["last_inference"], 70, "the latest, not a sum");
        assert_eq!(
            r["inference_stats"]["success"],
            json!({"count": 8, "ns": 13_000})
        );
        assert_eq!(
            r["inference_stats"]["queue"],
            json!({"count": 8, "ns": 1300})
        );
        assert_eq!(
            r["batch_stats"],
            json!([
                {"batch_size": 1, "compute_infer": {"count": 4, "ns": 400}},
                {"batch_size": 4, "compute_infer": {"count": 1, "ns": 100}},
            ])
        );
        assert_eq!(
            r["memory_usage"],
            json!([{"type": "CPU", "id": 0, "byte_size": 200}])
        );
        assert_eq!(rows[1]["name"], "other");
        assert_eq!(merge_json(&[]), json!({"model_stats": []}));
    }

    #[test]
    fn grpc_statistics_add_up_the_same_way() {
        let d = |count, ns| Some(StatisticDuration { count, ns });
        let one = |count: u64, last: u64, batch: u64| ModelStatistics {
            name: "m".into(),
            version: "1".into(),
            last_inference: last,
            inference_count: count,
            execution_count: count,
            inference_stats: Some(InferStatistics {
                success: d(count, count * 10),
                ..Default::default()
            }),
            batch_stats: vec![InferBatchStatistics {
                batch_size: batch,
                compute_infer: d(count, count * 5),
                ..Default::default()
            }],
            memory_usage: vec![MemoryUsage {
                r#type: "CPU".into(),
                id: 0,
                byte_size: 7,
            }],
            response_stats: Default::default(),
        };
        let merged = merge_proto(vec![vec![one(2, 9, 4)], vec![one(3, 4, 1)], vec![]]);
        assert_eq!(merged.len(), 1);
        let m = &merged[0];
        assert_eq!(
            (m.inference_count, m.execution_count, m.last_inference),
            (5, 5, 9)
        );
        assert_eq!(m.inference_stats.unwrap().success, d(5, 50));
        let sizes: Vec<u64> = m.batch_stats.iter().map(|b| b.batch_size).collect();
        assert_eq!(sizes, vec![1, 4]);
        assert_eq!(m.memory_usage[0].byte_size, 14);
    }
}
