//! The exact key: what decides a model version's answer, its 128-bit hash, the
//! stored fingerprint compared on every hit, and the byte form an entry takes in
//! a shared store (Redis).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_core::{DataType, Tensor};
use xxhash_rust::xxh3::Xxh3;

/// What decides a model version's answer: compared in full on every hit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fingerprint {
    pub model: String,
    pub version: u64,
    /// Which load of the version answers: its load generation in the local cache,
    /// the digest of its files and config in a shared one (see [`super::identity`]).
    pub scope: u128,
    pub inputs: Vec<Tensor>,
}

/// What identifies the request being answered, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe<'a> {
    pub model: &'a str,
    pub version: u64,
    pub scope: u128,
    pub inputs: &'a [Tensor],
}

impl Probe<'_> {
    /// The 128-bit hash of the fingerprint; every field is length-prefixed so no two
    /// different fingerprints serialize alike.
    pub fn hash(&self) -> u128 {
        let mut h = Xxh3::new();
        let text = |h: &mut Xxh3, s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        text(&mut h, self.model);
        h.update(&self.version.to_le_bytes());
        h.update(&self.scope.to_le_bytes());
        h.update(&(self.inputs.len() as u64).to_le_bytes());
        for t in self.inputs {
            text(&mut h, &t.name);
            text(&mut h, t.datatype.v2_name());
            h.update(&(t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                h.update(&(d as u64).to_le_bytes());
            }
            h.update(&(t.data.len() as u64).to_le_bytes());
            h.update(&t.data);
        }
        h.digest128()
    }

    /// The stored entry answers exactly this request.
    pub fn matches(&self, f: &Fingerprint) -> bool {
        f.model == self.model
            && f.version == self.version
            && f.scope == self.scope
            && f.inputs.len() == self.inputs.len()
            && f.inputs.iter().zip(self.inputs).all(|(a, b)| {
                a.name == b.name
                    && a.datatype == b.datatype
                    && a.shape == b.shape
                    && a.data == b.data
            })
    }

    /// An owned fingerprint, its input bytes copied so an entry never pins a larger
    /// request body it was sliced from.
    pub fn to_fingerprint(self) -> Fingerprint {
        Fingerprint {
            model: self.model.to_owned(),
            version: self.version,
            scope: self.scope,
            inputs: self.inputs.iter().map(compact).collect(),
        }
    }
}

/// A tensor whose bytes are its own (not a slice of a batch or request buffer).
fn compact(t: &Tensor) -> Tensor {
    Tensor {
        name: t.name.clone(),
        datatype: t.datatype,
        shape: t.shape.clone(),
        data: Bytes::copy_from_slice(&t.data),
    }
}

/// One cached answer: what it answers and every output of the model.
#[derive(Debug)]
pub(crate) struct Entry {
    pub fingerprint: Fingerprint,
    pub outputs: Vec<Tensor>,
}

/// Bookkeeping bytes counted per entry and per tensor besides names and data.
const ENTRY_OVERHEAD: usize = 160;
const TENSOR_OVERHEAD: usize = 80;

/// First bytes of an encoded entry; a new layout gets a new tag (old values then
/// read as misses, never as wrong answers).
const TAG: &[u8; 8] = b"SLUICE\x01\x00";

impl Entry {
    pub fn new(probe: Probe<'_>, outputs: &[Tensor]) -> Entry {
        Entry {
            fingerprint: probe.to_fingerprint(),
            outputs: outputs.iter().map(compact).collect(),
        }
    }

    /// The bytes this entry takes out of the budget (key included).
    pub fn weight(&self) -> u32 {
        let tensor = |t: &Tensor| TENSOR_OVERHEAD + t.name.len() + t.shape.len() * 8 + t.data.len();
        let bytes = ENTRY_OVERHEAD
            + 16
            + self.fingerprint.model.len()
            + self.fingerprint.inputs.iter().map(tensor).sum::<usize>()
            + self.outputs.iter().map(tensor).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// The entry as one byte string: fingerprint and outputs, length-prefixed.
    pub fn encode(&self) -> Bytes {
        let tensors = |ts: &[Tensor]| {
            ts.iter()
                .map(|t| 32 + t.name.len() + t.shape.len() * 8 + t.data.len())
                .sum::<usize>()
        };
        let f = &self.fingerprint;
        let mut out = BytesMut::with_capacity(
            64 + f.model.len() + tensors(&f.inputs) + tensors(&self.outputs),
        );
        out.put_slice(TAG);
        put_str(&mut out, &f.model);
        out.put_u64_le(f.version);
        out.put_u128_le(f.scope);
        put_tensors(&mut out, &f.inputs);
        put_tensors(&mut out, &self.outputs);
        out.freeze()
    }

    /// Reads [`Entry::encode`]'s form; `None` for anything else (another layout, a
    /// truncated or foreign value). Tensor bytes are slices of `value`, not copies;
    /// every output is checked against its shape and datatype.
    pub fn decode(mut value: Bytes) -> Option<Entry> {
        if value.len() < TAG.len() || &value[..TAG.len()] != TAG {
            return None;
        }
        value.advance(TAG.len());
        let model = get_str(&mut value)?;
        let version = get_u64(&mut value)?;
        if value.remaining() < 16 {
            return None;
        }
        let scope = value.get_u128_le();
        let inputs = get_tensors(&mut value)?;
        let outputs = get_tensors(&mut value)?;
        value.is_empty().then_some(Entry {
            fingerprint: Fingerprint {
                model,
                version,
                scope,
                inputs,
            },
            outputs,
        })
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u64_le(s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn put_tensors(out: &mut BytesMut, ts: &[Tensor]) {
    out.put_u64_le(ts.len() as u64);
    for t in ts {
        put_str(out, &t.name);
        put_str(out, t.datatype.v2_name());
        out.put_u64_le(t.shape.len() as u64);
        for &d in &t.shape {
            out.put_u64_le(d as u64);
        }
        out.put_u64_le(t.data.len() as u64);
        out.put_slice(&t.data);
    }
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64_le())
}

/// A length read from the value, no larger than what is left of it.
fn get_len(b: &mut Bytes) -> Option<usize> {
    let n = usize::try_from(get_u64(b)?).ok()?;
    (n <= b.remaining()).then_some(n)
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    let n = get_len(b)?;
    Some(b.split_to(n))
}

fn get_str(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}

fn get_tensors(b: &mut Bytes) -> Option<Vec<Tensor>> {
    // Each tensor takes at least 32 bytes, which bounds the count before allocating.
    let count = usize::try_from(get_u64(b)?).ok()?;
    if count > b.remaining() / 32 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name = get_str(b)?;
        let datatype = DataType::from_v2_name(&get_str(b)?)?;
        let dims = usize::try_from(get_u64(b)?).ok()?;
        if dims > b.remaining() / 8 {
            return None;
        }
        let shape = (0..dims)
            .map(|_| get_u64(b).and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()?;
        let data = get_bytes(b)?;
        out.push(Tensor::new(name, datatype, shape, data).ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{probe, t};

    #[test]
    fn key_differs_on_everything_that_decides_the_answer() {
        let base = vec![t("x", DataType::F32, vec![1, 2], &[0; 8])];
        let h = probe(&base).hash();
        let variants = [
            vec![t("y", DataType::F32, vec![1, 2], &[0; 8])],
            vec![t("x", DataType::I32, vec![1, 2], &[0; 8])],
            vec![t("x", DataType::F32, vec![2, 1], &[0; 8])],
            vec![t("x", DataType::F32, vec![2], &[0; 8])],
            vec![t("x", DataType::F32, vec![1, 2], &[0, 0, 0, 0, 0, 0, 0, 1])],
            vec![
                t("x", DataType::F32, vec![1, 2], &[0; 8]),
                t("z", DataType::F32, vec![0], &[]),
            ],
        ];
        for v in &variants {
            assert_ne!(probe(v).hash(), h, "{v:?}");
            assert!(!probe(v).matches(&probe(&base).to_fingerprint()));
        }
        let other_version = Probe {
            version: 2,
            ..probe(&base)
        };
        let other_scope = Probe {
            scope: 8,
            ..probe(&base)
        };
        let other_model = Probe {
            model: "n",
            ..probe(&base)
        };
        for p in [other_version, other_scope, other_model] {
            assert_ne!(p.hash(), h);
            assert!(!p.matches(&probe(&base).to_fingerprint()));
        }
        // Equal content in another buffer: the same key.
        let copy = vec![t("x", DataType::F32, vec![1, 2], &[0; 8])];
        assert_eq!(probe(&copy).hash(), h);
        assert!(probe(&copy).matches(&probe(&base).to_fingerprint()));
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        let inputs = vec![
            t("x", DataType::F32, vec![1, 2], &[1, 2, 3, 4, 5, 6, 7, 8]),
            t("s", DataType::Bytes, vec![1], &[2, 0, 0, 0, b'h', b'i']),
        ];
        let outputs = vec![t("y", DataType::I64, vec![1], &[9, 0, 0, 0, 0, 0, 0, 0])];
        let entry = Entry::new(probe(&inputs), &outputs);
        let back = Entry::decode(entry.encode()).unwrap();
        assert_eq!(back.fingerprint, entry.fingerprint);
        assert_eq!(back.outputs, entry.outputs);
        assert!(probe(&inputs).matches(&back.fingerprint));
    }

    #[test]
    fn foreign_or_damaged_values_decode_to_nothing() {
        let inputs = vec![t("x", DataType::F32, vec![1], &[1, 2, 3, 4])];
        let outputs = vec![t("y", DataType::F32, vec![2], &[0; 8])];
        let good = Entry::new(probe(&inputs), &outputs).encode();
        assert!(Entry::decode(Bytes::from_static(b"")).is_none());
        assert!(Entry::decode(Bytes::from_static(b"hello world, not ours")).is_none());
        // Every truncation, and trailing garbage.
        for n in 0..good.len() {
            assert!(Entry::decode(good.slice(..n)).is_none(), "prefix {n}");
        }
        let mut long = good.to_vec();
        long.push(0);
        assert!(Entry::decode(Bytes::from(long)).is_none());
        // An output whose bytes do not match its shape.
        let bad = Entry::new(probe(&inputs), &[t("y", DataType::F32, vec![3], &[0; 8])]);
        assert!(Entry::decode(bad.encode()).is_none());
        // Huge counts and lengths are refused without allocating.
        let mut huge = TAG.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Entry::decode(Bytes::from(huge)).is_none());
        // Every single flipped byte either decodes to nothing or to an entry that
        // can be checked: never a panic.
        for i in 0..good.len() {
            let mut v = good.to_vec();
            v[i] ^= 0xff;
            let _ = Entry::decode(Bytes::from(v));
        }
    }
}
