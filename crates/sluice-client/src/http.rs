//! The HTTP half: `GET v2/models/{m}` and `POST v2/models/{m}/infer` over HTTP/1.1
//! keep-alive connections (hyper's pool: one connection per request in flight).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sluice_core::DataType;

use crate::{Error, InputTensor, ModelMetadata, Protocol, RequestParameters, Result};

#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    protocol: Protocol,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An encoded `POST .../infer`.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    uri: hyper::Uri,
    body: Bytes,
    /// `Inference-Header-Content-Length` for binary requests.
    header_len: Option<usize>,
}

impl HttpRequest {
    /// The encoded body (for tests and reports).
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

fn model_path(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("v2/models/{model}/versions/{v}"),
        None => format!("v2/models/{model}"),
    }
}

impl HttpClient {
    pub fn new(base: &str, protocol: Protocol) -> Result<Self> {
        base.parse::<hyper::Uri>()
            .map_err(|_| Error::Address(base.to_owned()))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Ok(HttpClient {
            base: base.to_owned(),
            protocol,
            client,
        })
    }

    fn uri(&self, path: &str) -> Result<hyper::Uri> {
        format!("{}/{path}", self.base)
            .parse()
            .map_err(|_| Error::Address(format!("{}/{path}", self.base)))
    }

    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<Bytes> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Error::Transport(format!("{e:?}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(Error::Server {
                status: status.as_u16().to_string(),
                message,
            });
        }
        Ok(body)
    }

    /// `GET {base}/{path}` or, with a body, `POST`: the answer's JSON.
    pub async fn json(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let builder = match body {
            Some(_) => {
                hyper::Request::post(self.uri(path)?).header("content-type", "application/json")
            }
            None => hyper::Request::get(self.uri(path)?),
        };
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| Error::Address(e.to_string()))?;
        let answer = self.send(request).await?;
        serde_json::from_slice(&answer).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    pub async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata> {
        let request = hyper::Request::get(self.uri(&model_path(model, version))?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Address(e.to_string()))?;
        let body = self.send(request).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("model metadata: {e}")))
    }

    pub fn prepare(
        &self,
        model: &str,
        version: Option<&str>,
        inputs: &[InputTensor],
        parameters: RequestParameters,
    ) -> Result<HttpRequest> {
        let uri = self.uri(&format!("{}/infer", model_path(model, version)))?;
        let mut request_parameters = serde_json::Map::new();
        if let Some(us) = parameters.timeout_us() {
            request_parameters.insert("timeout".into(), json!(us));
        }
        match self.protocol {
            Protocol::HttpBinary => {
                let mut header = json!({
                    "inputs": inputs.iter().map(|t| json!({
                        "name": t.name, "shape": t.shape, "datatype": t.datatype.v2_name(),
                        "parameters": {"binary_data_size": t.data.len()},
                    })).collect::<Vec<_>>(),
                    "parameters": {"binary_data_output": true},
                });
                header["parameters"]
                    .as_object_mut()
                    .expect("an object")
                    .extend(request_parameters);
                let header = header.to_string();
                let mut body = header.clone().into_bytes();
                for t in inputs {
                    body.extend_from_slice(&t.data);
                }
                Ok(HttpRequest {
                    uri,
                    body: body.into(),
                    header_len: Some(header.len()),
                })
            }
            _ => {
                let inputs = inputs
                    .iter()
                    .map(|t| {
                        Ok(json!({
                            "name": t.name, "shape": t.shape, "datatype": t.datatype.v2_name(),
                            "data": json_data(t)?,
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut body = json!({ "inputs": inputs });
                if !request_parameters.is_empty() {
                    body["parameters"] = Value::Object(request_parameters);
                }
                Ok(HttpRequest {
                    uri,
                    body: body.to_string().into(),
                    header_len: None,
                })
            }
        }
    }

    pub async fn infer(&self, r: &HttpRequest) -> Result<usize> {
        let mut builder = hyper::Request::post(r.uri.clone());
        if let Some(len) = r.header_len {
            builder = builder
                .header("Inference-Header-Content-Length", len)
                .header("Content-Type", "application/octet-stream");
        } else {
            builder = builder.header("Content-Type", "application/json");
        }
        let request = builder
            .body(Full::new(r.body.clone()))
            .map_err(|e| Error::Address(e.to_string()))?;
        let body = self.send(request).await?;
        Ok(body.len())
    }
}

/// A tensor's elements as a flat JSON array.
fn json_data(t: &InputTensor) -> Result<Value> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> Value) -> Value {
        Value::Array(
            data.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunk of N bytes")))
                .collect(),
        )
    }
    let d = &t.data[..];
    Ok(match t.datatype {
        DataType::Bool => each::<1>(d, |b| json!(b[0] != 0)),
        DataType::U8 => each::<1>(d, |b| json!(b[0])),
        DataType::I8 => each::<1>(d, |b| json!(i8::from_le_bytes(b))),
        DataType::U16 => each::<2>(d, |b| json!(u16::from_le_bytes(b))),
        DataType::I16 => each::<2>(d, |b| json!(i16::from_le_bytes(b))),
        DataType::U32 => each::<4>(d, |b| json!(u32::from_le_bytes(b))),
        DataType::I32 => each::<4>(d, |b| json!(i32::from_le_bytes(b))),
        DataType::U64 => each::<8>(d, |b| json!(u64::from_le_bytes(b))),
        DataType::I64 => each::<8>(d, |b| json!(i64::from_le_bytes(b))),
        DataType::F16 => each::<2>(d, |b| json!(half::f16::from_le_bytes(b).to_f32())),
        DataType::Bf16 => each::<2>(d, |b| json!(half::bf16::from_le_bytes(b).to_f32())),
        DataType::F32 => each::<4>(d, |b| json!(f32::from_le_bytes(b))),
        DataType::F64 => each::<8>(d, |b| json!(f64::from_le_bytes(b))),
        DataType::Bytes => {
            return Err(Error::Encode {
                name: t.name.clone(),
                reason: "BYTES tensors are not supported".into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> InputTensor {
        InputTensor::new("x", datatype, shape, data.into()).unwrap()
    }

    #[test]
    fn json_requests_carry_typed_data() {
        let c = HttpClient::new("http://127.0.0.1:1", Protocol::HttpJson).unwrap();
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let r = c
            .prepare(
                "m",
                Some("2"),
                &[tensor(DataType::F32, vec![1, 2], data)],
                RequestParameters::default(),
            )
            .unwrap();
        assert_eq!(r.uri.path(), "/v2/models/m/versions/2/infer");
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["inputs"][0]["data"], json!([1.5, -2.0]));
        assert_eq!(v["inputs"][0]["datatype"], "FP32");
        assert_eq!(v["inputs"][0]["shape"], json!([1, 2]));
        assert_eq!(v.get("parameters"), None);
        let i = tensor(
            DataType::I64,
            vec![2],
            [-3i64, 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        assert_eq!(json_data(&i).unwrap(), json!([-3, 4]));
        let b = tensor(DataType::Bool, vec![2], vec![1, 0]);
        assert_eq!(json_data(&b).unwrap(), json!([true, false]));
    }

    #[test]
    fn binary_requests_put_the_tensor_after_the_header() {
        let c = HttpClient::new("http://127.0.0.1:1", Protocol::HttpBinary).unwrap();
        let parameters = RequestParameters {
            timeout: Some(std::time::Duration::from_millis(20)),
        };
        let r = c
            .prepare(
                "m",
                None,
                &[tensor(DataType::U8, vec![3], vec![7, 8, 9])],
                parameters,
            )
            .unwrap();
        let len = r.header_len.unwrap();
        let header: Value = serde_json::from_slice(&r.body()[..len]).unwrap();
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 3);
        assert_eq!(
            header["parameters"],
            json!({"binary_data_output": true, "timeout": 20_000})
        );
        assert_eq!(&r.body()[len..], &[7, 8, 9]);
    }

    #[test]
    fn a_tensor_must_hold_its_shape() {
        let e = InputTensor::new("x", DataType::F32, vec![2], vec![0; 4].into()).unwrap_err();
        assert!(e.to_string().contains("do not hold 2"), "{e}");
    }
}
