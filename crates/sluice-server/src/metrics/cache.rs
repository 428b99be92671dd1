//! The response cache's metrics: the whole cache's counters and gauges
//! (`sluice_cache_*`), per model version hits and misses, and Triton's per-model
//! `nv_cache_*` names under `--metrics-triton-compat`.

use sluice_runtime::{CacheStats, VersionStats};

use super::Writer;

/// A metric family read off each version: name, help and the figure.
type PerVersion = (&'static str, &'static str, fn(&VersionStats) -> u64);

/// Sluice's names. Nothing is written when no cache is configured.
pub(super) fn native(out: &mut Writer, versions: &[VersionStats], cache: Option<CacheStats>) {
    let Some(c) = cache else {
        return;
    };
    let figures: [(&str, &str, &str, Option<u64>); 10] = [
        ("sluice_cache_hits_total", "counter", "Requests answered from the response cache.", Some(c.hits)),
        ("sluice_cache_misses_total", "counter", "Requests for cached models the response cache did not answer.", Some(c.misses)),
        ("sluice_cache_inserts_total", "counter", "Answers stored in the response cache.", Some(c.inserts)),
        ("sluice_cache_evictions_total", "counter", "Entries removed from the response cache for its byte budget or TTL.", Some(c.evictions)),
        ("sluice_cache_errors_total", "counter", "Failed, timed-out or undecodable operations on the Redis cache (each one ran the model instead).", Some(c.errors)),
        ("sluice_cache_outages_total", "counter", "Times the Redis cache became unavailable (the first error after a success).", Some(c.outages)),
        // Known for the local cache only (Redis reports its own memory and keys).
        ("sluice_cache_bytes", "gauge", "Bytes the response cache's entries take (keys and values).", c.bytes),
        ("sluice_cache_budget_bytes", "gauge", "The response cache's byte budget (--cache-config local,size=).", c.budget_bytes),
        ("sluice_cache_entries", "gauge", "Entries in the response cache.", c.entries),
        ("sluice_cache_pending", "gauge", "Requests in a cache lookup now: running the model, or waiting for an identical request's run.", Some(c.pending)),
    ];
    for (name, kind, help, value) in figures {
        if let Some(value) = value {
            out.family(name, kind, help);
            out.sample(name, &[], value as f64);
        }
    }
    let per_version: [PerVersion; 2] = [
        (
            "sluice_model_cache_hits_total",
            "Requests of the model version answered from the response cache.",
            |v| v.stats.cache_hit.get().0,
        ),
        (
            "sluice_model_cache_misses_total",
            "Requests of the model version the response cache did not answer.",
            |v| v.stats.cache_miss.get().0,
        ),
    ];
    write_per_version(out, versions, &per_version);
}

/// Triton's per-model cache metrics (durations in microseconds).
pub(super) fn triton(out: &mut Writer, versions: &[VersionStats]) {
    let families: [PerVersion; 4] = [
        (
            "nv_cache_num_hits_per_model",
            "Number of cache hits per model",
            |v| v.stats.cache_hit.get().0,
        ),
        (
            "nv_cache_num_misses_per_model",
            "Number of cache misses per model",
            |v| v.stats.cache_miss.get().0,
        ),
        (
            "nv_cache_hit_duration_per_model",
            "Total cache hit duration per model, in microseconds",
            |v| v.stats.cache_hit.get().1 / 1000,
        ),
        (
            "nv_cache_miss_duration_per_model",
            "Total cache miss (insert + lookup) duration per model, in microseconds",
            |v| v.stats.cache_miss.get().1 / 1000,
        ),
    ];
    write_per_version(out, versions, &families);
}

/// One counter family per entry, one sample per model version.
fn write_per_version(out: &mut Writer, versions: &[VersionStats], families: &[PerVersion]) {
    for &(name, help, figure) in families {
        out.family(name, "counter", help);
        for v in versions {
            let version = v.version.to_string();
            out.sample(
                name,
                &[("model", &v.name), ("version", &version)],
                figure(v) as f64,
            );
        }
    }
}
