//! OpenTelemetry export (cargo feature `otlp`): request spans, which carry the
//! caller's `traceparent`, go to a collector over OTLP/HTTP (protobuf) in batches.
//!
//! Key decision: only requests that arrive with trace context get a span (see
//! `sluice_server::TraceContextLayer`), so export costs nothing for untraced traffic;
//! the batch exporter runs on its own thread and flushes when the server stops.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::registry::LookupSpan;

/// Flushes and stops the exporter when dropped.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("sluice: OTLP exporter did not shut down cleanly: {e}");
        }
    }
}

/// The traces URL for a collector address: `http://host:4318` becomes
/// `http://host:4318/v1/traces`; a URL that already names the path is kept.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// A tracing layer exporting spans to `endpoint`, and the guard that flushes them.
pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, Exporter)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    anyhow::ensure!(
        endpoint.starts_with("http://"),
        "--otlp-endpoint must be an http:// URL (OTLP/HTTP without TLS), got '{endpoint}'"
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .build()
        .context("cannot build the OTLP exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("sluice").build())
        .build();
    let tracer = provider.tracer("sluice");
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Exporter(provider),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            super::traces_url("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
