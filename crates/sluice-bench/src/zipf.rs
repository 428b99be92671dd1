//! `--zipf S`: the order in which distinct requests are sent, drawn from a Zipf
//! distribution (request `k` of `N`, counted from 1, is sent with probability
//! proportional to `1 / k^S`), the shape of repeated traffic that response caches
//! are built for (a few very popular inputs, a long tail of rare ones).
//!
//! Key decision: the draw is made once, before the clock starts, from the
//! benchmark's seed, into a long fixed sequence of (cheaply cloned) queries that
//! the load generator rotates through as it does without `--zipf`. Past its
//! 131 072 queries a run starts the same sequence again (still Zipf-distributed).

use crate::rng::Rng;

/// Queries in a Zipf sequence (the run rotates through it).
pub const SEQUENCE_LEN: usize = 1 << 17;

/// `len` draws of indices in `0..n` (`n > 0`), index `k` with weight `1/(k+1)^s`.
pub fn indices(n: usize, s: f64, len: usize, seed: u64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / (k as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = Rng::new(seed ^ 0x5A49_5046);
    (0..len)
        .map(|_| {
            let u = rng.uniform() * total;
            cdf.partition_point(|&c| c <= u).min(n - 1)
        })
        .collect()
}

/// The queries in Zipf order: `queries[indices[i]]` for each draw.
pub fn reorder<T: Clone>(queries: &[T], s: f64, seed: u64) -> Vec<T> {
    indices(queries.len(), s, SEQUENCE_LEN, seed)
        .into_iter()
        .map(|i| queries[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_zipf_law() {
        let n = 1000;
        let draws = indices(n, 1.0, 200_000, 3);
        let mut counts = vec![0usize; n];
        for &i in &draws {
            counts[i] += 1;
        }
        // P(1) = 1 / H(1000) ≈ 0.1336, and P(1)/P(k) = k.
        let p1 = counts[0] as f64 / draws.len() as f64;
        assert!((p1 - 0.1336).abs() < 0.01, "{p1}");
        let ratio = counts[0] as f64 / counts[9] as f64;
        assert!((ratio - 10.0).abs() < 1.5, "{ratio}");
        assert!(counts.iter().all(|&c| c < draws.len()));
        // Same seed, same order.
        assert_eq!(indices(n, 1.0, 100, 3), indices(n, 1.0, 100, 3));
        // s = 0 is uniform.
        let flat = indices(4, 0.0, 40_000, 1);
        for k in 0..4 {
            let c = flat.iter().filter(|&&i| i == k).count();
            assert!((9_000..11_000).contains(&c), "{k}: {c}");
        }
    }
}
