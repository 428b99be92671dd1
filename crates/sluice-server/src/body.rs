//! Request and response bodies: the size limit, compressed requests
//! (`Content-Encoding: gzip | deflate`) and compressed responses (`Accept-Encoding`).
//!
//! Key decision: `--max-body-bytes` bounds the body as it arrives *and* the body once
//! inflated. Inflating reads into a buffer that never grows past the limit and stops
//! at the first byte over it, so a small "zip bomb" costs at most the limit in memory
//! (the size a gzip trailer claims is never trusted). As in Triton's server, a
//! compressed body is recognised by its own header (gzip or zlib), whichever of the
//! two encodings the request names; `deflate` is zlib-wrapped, as HTTP defines it and
//! `tritonclient` sends it, and a raw deflate stream is accepted too.

use std::io::{Read, Write};

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use sluice_core::{Error, ErrorKind, Result};

use crate::ApiError;

/// Bodies larger than this are inflated or compressed on tokio's blocking pool.
const BLOCKING_FROM: usize = 256 * 1024;

/// An HTTP content coding Sluice reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn parse(name: &str) -> Option<Coding> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            _ => None,
        }
    }
}

/// The coding of a request body (`Content-Encoding`); unknown codings are refused.
pub fn request_coding(headers: &HeaderMap) -> Result<Coding> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Coding::Identity);
    };
    value.to_str().ok().and_then(Coding::parse).ok_or_else(|| {
        Error::unsupported(format!(
            "Unsupported compression type: Content-Encoding {value:?} (supported: gzip, deflate, identity)"
        ))
    })
}

/// The coding to answer with, from `Accept-Encoding`, as Triton's server picks it:
/// the `gzip`, `deflate` or `identity` with the highest `q` (the first on a tie;
/// `q=0` never). Other codings, `*` included, are ignored.
pub fn response_coding(headers: &HeaderMap) -> Coding {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Coding::Identity;
    };
    let mut best = (Coding::Identity, 0.0f64);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let Some(coding) = parts.next().and_then(Coding::parse) else {
            continue;
        };
        if item.trim().is_empty() {
            continue;
        }
        let mut weight = 1.0;
        for p in parts {
            if let Some(q) = p.trim().strip_prefix("q=") {
                weight = q.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
        if weight > best.1 {
            best = (coding, weight);
        }
    }
    best.0
}

fn too_large(limit: usize, what: &str) -> ApiError {
    ApiError(Error::new(
        ErrorKind::PayloadTooLarge,
        format!("the {what} is larger than the limit of {limit} bytes (--max-body-bytes)"),
    ))
}

/// Reads a whole request body: at most `limit` bytes as sent, and, when it is
/// compressed, at most `limit` bytes once inflated (413 past either).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let coding = request_coding(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, "request body"));
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if let Some(busy) = crate::body_budget::over_budget(&e) {
            return busy;
        }
        let limited = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit exceeded"))
            || e.to_string().contains("length limit exceeded");
        if limited {
            too_large(limit, "request body")
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    if coding == Coding::Identity {
        return Ok(raw);
    }
    let inflated = if raw.len() < BLOCKING_FROM {
        inflate(coding, &raw, limit)
    } else {
        tokio::task::spawn_blocking(move || inflate(coding, &raw, limit))
            .await
            .map_err(|e| Error::internal(format!("the decompression task failed: {e}")))?
    };
    Ok(Bytes::from(inflated?))
}

/// Inflates a gzip, zlib or raw deflate stream into at most `limit` bytes.
pub fn inflate(coding: Coding, data: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(data))
    } else if is_zlib_header(data) {
        Box::new(ZlibDecoder::new(data))
    } else {
        Box::new(DeflateDecoder::new(data))
    };
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ApiError::invalid(format!(
                    "cannot decompress the request body (Content-Encoding: {}): {e}",
                    coding.name()
                )))
            }
        };
        if out.len() + n > limit {
            return Err(too_large(limit, "decompressed request body"));
        }
        if out.capacity() - out.len() < n {
            // Grow geometrically, but never past the limit.
            let want = (out.capacity() * 2).max(out.len() + n).min(limit);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// RFC 1950: compression method 8 and a header checksum that divides by 31.
fn is_zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && ((u16::from(*cmf) << 8) | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Compresses the parts of a response body, in order, into one stream.
pub fn compress(coding: Coding, parts: &[&[u8]]) -> Result<Vec<u8>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let fail = |e: std::io::Error| Error::internal(format!("cannot compress the response: {e}"));
    // Fast compression: the server's CPU is what every request shares.
    let level = Compression::fast();
    let out = Vec::with_capacity(total / 2 + 64);
    match coding {
        Coding::Identity => {
            let mut out = out;
            for p in parts {
                out.extend_from_slice(p);
            }
            Ok(out)
        }
        Coding::Gzip => {
            let mut e = GzEncoder::new(out, level);
            for p in parts {
                e.write_all(p).map_err(fail)?;
            }
            e.finish().map_err(fail)
        }
        Coding::Deflate => {
            let mut e = ZlibEncoder::new(out, level);
            for p in parts {
                e.write_all(p).map_err(fail)?;
            }
            e.finish().map_err(fail)
        }
    }
}

/// Compresses a response body, on the blocking pool when it is large.
pub async fn compress_response(
    coding: Coding,
    json: Vec<u8>,
    binary: Vec<Bytes>,
) -> Result<Vec<u8>> {
    let total = json.len() + binary.iter().map(Bytes::len).sum::<usize>();
    let run = move || {
        let mut parts: Vec<&[u8]> = vec![&json];
        parts.extend(binary.iter().map(|b| &b[..]));
        compress(coding, &parts)
    };
    if total < BLOCKING_FROM {
        return run();
    }
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| Error::internal(format!("the compression task failed: {e}")))?
}

/// The `Content-Encoding` value of a coding (none for identity).
pub fn content_encoding(coding: Coding) -> Option<&'static str> {
    (coding != Coding::Identity).then(|| coding.name())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::write::DeflateEncoder;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        compress(Coding::Gzip, &[data]).unwrap()
    }

    #[test]
    fn each_coding_round_trips_and_is_recognised_by_its_header() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let zlib = compress(Coding::Deflate, &[&data[..10], &data[10..]]).unwrap();
        let gz = gzip(&data);
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        for (name, body) in [("zlib", &zlib), ("gzip", &gz), ("raw", &raw)] {
            // Triton inflates either header whatever the request names.
            for coding in [Coding::Gzip, Coding::Deflate] {
                assert_eq!(inflate(coding, body, data.len()).unwrap(), data, "{name}");
            }
        }
        assert!(is_zlib_header(&zlib) && !is_zlib_header(&gz) && !is_zlib_header(&raw));
        // Two gzip members are one body.
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(inflate(Coding::Gzip, &two, 10).unwrap(), b"abcd");
    }

    #[test]
    fn the_limit_applies_to_the_inflated_size_without_allocating_the_claim() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let limit = 1 << 20;
        let err = inflate(Coding::Gzip, &bomb, limit).unwrap_err();
        assert_eq!(err.0.kind(), ErrorKind::PayloadTooLarge);
        assert!(err.0.message().contains("decompressed"), "{}", err.0);
        assert_eq!(
            inflate(Coding::Gzip, &bomb, zeros.len()).unwrap().len(),
            zeros.len()
        );
        assert_eq!(inflate(Coding::Gzip, &gzip(b""), 0).unwrap(), b"");
    }

    #[test]
    fn corrupt_streams_are_invalid_requests() {
        let mut gz = gzip(&[7u8; 1000]);
        let n = gz.len();
        gz[n / 2] ^= 0xff;
        gz.truncate(n - 3);
        for body in [&gz[..], b"\x78\x9cnot zlib", b"plain text"] {
            let err = inflate(Coding::Deflate, body, 1 << 20).unwrap_err();
            assert_eq!(err.0.kind(), ErrorKind::InvalidArgument, "{}", err.0);
        }
    }

    #[test]
    fn codings_are_negotiated_like_triton() {
        let pick = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(accept).unwrap(),
            );
            response_coding(&h)
        };
        assert_eq!(response_coding(&HeaderMap::new()), Coding::Identity);
        assert_eq!(pick("gzip"), Coding::Gzip);
        assert_eq!(pick("deflate"), Coding::Deflate);
        assert_eq!(pick("br, deflate;q=0.5, gzip;q=0.8"), Coding::Gzip);
        assert_eq!(pick("gzip, deflate"), Coding::Gzip);
        assert_eq!(pick("gzip;q=0, identity"), Coding::Identity);
        assert_eq!(pick("br, *"), Coding::Identity);
        assert_eq!(pick("gzip;q=abc"), Coding::Identity);

        let coding = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            request_coding(&h)
        };
        assert_eq!(coding("gzip").unwrap(), Coding::Gzip);
        assert_eq!(coding("Deflate").unwrap(), Coding::Deflate);
        assert_eq!(coding("identity").unwrap(), Coding::Identity);
        let err = coding("br").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}
