//! `POST v2/models/{m}[/versions/{v}]/infer`: JSON, binary-tensor and raw binary
//! requests, optionally compressed; responses compressed on `Accept-Encoding`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::{Bytes, BytesMut};
use sluice_core::InferRequest;

use crate::body::{compress_response, content_encoding, read_body, response_coding, Coding};
use crate::codec::{decode_request, encode_response, OutputPlan};
use crate::models::parse_version;
use crate::raw::decode_raw_request;
use crate::{ApiError, AppState};

/// Triton's header giving the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
}

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(&s, &model, None, &headers, body).await
}

async fn infer_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    run(&s, &model, Some(version), &headers, body).await
}

async fn run(
    s: &AppState,
    model: &str,
    version: Option<u64>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // An unknown or unavailable model is reported before the body is read.
    s.runtime.check_servable(model, version)?;
    let started = std::time::Instant::now();
    let (request, plan) = match receive(s, model, version, headers, body).await {
        Ok(received) => received,
        Err(e) => {
            s.runtime.record_invalid(model, version, started.elapsed());
            return Err(e);
        }
    };
    let coding = response_coding(headers);
    let response = s.runtime.infer(model, version, request).await?;
    let encoded = encode_response(&response, &plan)?;
    let json_len = encoded.json.len();
    let binary = !encoded.binary.is_empty();
    let content = if coding == Coding::Identity && !binary {
        Bytes::from(encoded.json)
    } else if coding == Coding::Identity {
        let total = json_len + encoded.binary.iter().map(Bytes::len).sum::<usize>();
        let mut out = BytesMut::with_capacity(total);
        out.extend_from_slice(&encoded.json);
        for part in &encoded.binary {
            out.extend_from_slice(part);
        }
        out.freeze()
    } else {
        Bytes::from(compress_response(coding, encoded.json, encoded.binary).await?)
    };
    let mut r = (StatusCode::OK, content).into_response();
    let h = r.headers_mut();
    let content_type = if binary {
        "application/octet-stream"
    } else {
        "application/json"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if binary {
        // The length of the JSON part before compression, as Triton sends it.
        h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    }
    if let Some(encoding) = content_encoding(coding) {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(r)
}

/// Reads and decodes the body of an inference request: JSON, JSON with binary
/// tensors behind it, or (header length 0) one raw binary input.
async fn receive(
    s: &AppState,
    model: &str,
    version: Option<u64>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InferRequest, OutputPlan), ApiError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Inference-Header-Content-Length must be a non-negative integer",
                    )
                })?,
        ),
    };
    // The header length counts bytes of the body once decompressed.
    let body = read_body(headers, body, s.config.max_body_bytes).await?;
    if header_len == Some(0) {
        let signature = s.runtime.model_metadata(model, version)?.signature;
        return Ok(decode_raw_request(body, &signature)?);
    }
    Ok(decode_request(&body, header_len)?)
}
