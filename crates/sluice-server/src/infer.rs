//! `POST v2/models/{m}[/versions/{v}]/infer`: JSON and binary-tensor requests.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::{Bytes, BytesMut};
use sluice_core::{Error, ErrorKind, InferRequest};

use crate::codec::{decode_request, encode_response, OutputPlan};
use crate::models::parse_version;
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
    let (request, plan) = match receive(s, headers, body).await {
        Ok(received) => received,
        Err(e) => {
            s.runtime.record_invalid(model, version, started.elapsed());
            return Err(e);
        }
    };
    let response = s.runtime.infer(model, version, request).await?;
    let encoded = encode_response(&response, &plan)?;
    if encoded.binary.is_empty() {
        let mut r = Response::new(Body::from(encoded.json));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    let json_len = encoded.json.len();
    let total = json_len + encoded.binary.iter().map(Bytes::len).sum::<usize>();
    let mut out = BytesMut::with_capacity(total);
    out.extend_from_slice(&encoded.json);
    for part in &encoded.binary {
        out.extend_from_slice(part);
    }
    let mut r = (StatusCode::OK, out.freeze()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(r)
}

/// Reads and decodes the body of an inference request.
async fn receive(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InferRequest, OutputPlan), ApiError> {
    let body = read_body(headers, body, s.config.max_body_bytes).await?;
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
    Ok(decode_request(&body, header_len)?)
}

/// Reads the whole body, refusing bodies over `limit` (413) and compressed bodies.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(ApiError(Error::unsupported(format!(
                "Content-Encoding {enc:?} is not supported; send the body uncompressed"
            ))));
        }
    }
    let too_large = || {
        ApiError(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the request body is larger than the limit of {limit} bytes (--max-body-bytes)"
            ),
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let limited = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit exceeded"))
            || e.to_string().contains("length limit exceeded");
        if limited {
            too_large()
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })
}
