//! Trace spans: ordinary `tracing` spans, exported by OpenTelemetry when an OTLP endpoint is set.
//!
//! Herald makes three spans per event: `herald.consume` (the consumer, a child of the bus
//! message's W3C `traceparent` or a new root), `herald.publish` (the backplane write) and
//! `herald.deliver` (one per gateway node that dispatches the event to its connections, a child
//! of the `traceparent` carried in the Redis envelope). docs/operations.md ("Tracing") lists the
//! variables; everything is read from the standard `OTEL_*` ones by the SDK, except what the SDK
//! would silently ignore when misspelt (protocol, timeout), which is checked here.
//!
//! When no endpoint is set, nothing is installed and [`enabled`] is false: call sites skip
//! building spans altogether, so the hot path pays one relaxed atomic load.
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; callers on hot paths skip building spans when not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A setting of the trace exporter that cannot be used, with the variable that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";

/// The exporter's settings that Herald itself reads (the SDK reads the rest: headers,
/// compression, sampler, resource attributes, batch sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The variable that named the endpoint (for error messages).
    pub endpoint_var: &'static str,
    /// An `https://` endpoint.
    pub tls: bool,
    pub protocol: Protocol,
    pub timeout: Duration,
}

impl ExportSettings {
    /// `None` when neither endpoint variable is set (export off). `env` looks a variable up.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let set = |var: &'static str| {
            env(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (var, v))
        };
        let Some((endpoint_var, endpoint)) = set(TRACES_ENDPOINT).or_else(|| set(ENDPOINT)) else {
            return Ok(None);
        };
        let tls = endpoint.to_ascii_lowercase().starts_with("https://");
        let protocol = match set(TRACES_PROTOCOL).or_else(|| set(PROTOCOL)) {
            None => Protocol::HttpBinary,
            Some((var, v)) => match v.to_ascii_lowercase().as_str() {
                "http/protobuf" => Protocol::HttpBinary,
                "grpc" => Protocol::Grpc,
                _ => {
                    return Err(ConfigError {
                        var,
                        problem: format!("expected http/protobuf or grpc, got {v:?}"),
                    });
                }
            },
        };
        let timeout = match set(TRACES_TIMEOUT).or_else(|| set(TIMEOUT)) {
            None => Duration::from_secs(10),
            Some((var, v)) => Duration::from_millis(v.parse().map_err(|_| ConfigError {
                var,
                problem: format!("expected milliseconds, got {v:?}"),
            })?),
        };
        // No compression is built in; the SDK would only warn and send uncompressed.
        if let Some((var, v)) = set(TRACES_COMPRESSION).or_else(|| set(COMPRESSION))
            && !v.eq_ignore_ascii_case("none")
        {
            return Err(ConfigError {
                var,
                problem: format!("Herald sends spans uncompressed: expected none, got {v:?}"),
            });
        }
        Ok(Some(Self {
            endpoint_var,
            tls,
            protocol,
            timeout,
        }))
    }
}

/// The installed exporter. Dropping it without [`Tracing::shutdown`] may lose the last batch.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// Builds the OTLP exporter and a batching tracer provider from the process environment;
    /// `None` when no endpoint is set. `node` is the `service.instance.id`. Call from within a
    /// tokio runtime (the HTTP client and the gRPC channel run on it).
    pub fn from_env(node: &str) -> Result<Option<Self>, ConfigError> {
        let Some(settings) = ExportSettings::from_lookup(|k| std::env::var(k).ok())? else {
            return Ok(None);
        };
        let bad = |e: opentelemetry_otlp::ExporterBuildError| ConfigError {
            var: settings.endpoint_var,
            problem: e.to_string(),
        };
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            Protocol::Grpc => {
                let mut grpc = builder
                    .with_tonic()
                    .with_protocol(Protocol::Grpc)
                    .with_timeout(settings.timeout);
                if settings.tls {
                    // tonic trusts no roots unless told to: the OS store, as for HTTP.
                    grpc = grpc.with_tls_config(ClientTlsConfig::new().with_native_roots());
                }
                grpc.build().map_err(bad)?
            }
            _ => builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(settings.timeout)
                .with_http_client(on_runtime_client(settings.timeout))
                .build()
                .map_err(bad)?,
        };
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(node))
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("herald");
        Ok(Some(Self { provider, tracer }))
    }

    /// The `tracing` layer that turns Herald's spans into OpenTelemetry spans. Installing it
    /// switches [`enabled`] on.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        ENABLED.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
    }

    /// Exports what is still batched (bounded by the exporter timeout) and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter shutdown");
        }
    }
}

/// `service.name` (`OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else `herald`),
/// `service.instance.id` (the node id unless `OTEL_RESOURCE_ATTRIBUTES` names one) and the
/// SDK's own attributes.
fn resource(node: &str) -> Resource {
    let detected: Vec<Box<dyn ResourceDetector>> = vec![
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let mut builder = Resource::builder_empty()
        .with_service_name("herald")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node.to_owned(),
        ))
        .with_detectors(&detected);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        builder = builder.with_service_name(name.trim().to_owned());
    }
    builder.build()
}

/// The HTTP client for OTLP/HTTP: hyper with rustls (ring, the OS trust store), so both
/// `http://` and `https://` endpoints work without reqwest or a second TLS stack.
fn on_runtime_client(timeout: Duration) -> OnRuntime {
    let client: Arc<dyn HttpClient> =
        match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => Arc::new(HyperClient::new(
                b.https_or_http().enable_http1().build(),
                timeout,
                None,
            )),
            Err(e) => {
                // No readable trust store: http:// still works, https:// fails on each export.
                tracing::warn!(error = %e, "no TLS root certificates; OTLP over https will fail");
                Arc::new(HyperClient::with_default_connector(timeout, None))
            }
        };
    OnRuntime {
        client,
        runtime: tokio::runtime::Handle::current(),
    }
}

/// Runs each request on the tokio runtime: the SDK's batch processor exports from its own
/// thread, where hyper's connector and timer would find no reactor.
#[derive(Debug)]
struct OnRuntime {
    client: Arc<dyn HttpClient>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// The span `make` builds, as a child of `traceparent` (see [`set_parent`]); with export off,
/// `make` is not called and the span is `Span::none()`, so a call site costs one atomic load.
pub fn child_of(traceparent: Option<&str>, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = make();
    set_parent(&span, traceparent);
    span
}

/// Makes `span` a child of the W3C `traceparent` when it parses; otherwise `span` stays a
/// root (or a child of the current span).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), tp.trim().to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Marks `span` failed with `error` (its fields `otel.status_code` and
/// `otel.status_description` must be declared, as `Empty`).
pub fn fail(span: &tracing::Span, error: &dyn std::fmt::Display) {
    if !span.is_disabled() {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", error.to_string());
    }
}

/// The `traceparent` a child of `span` should carry; `None` when `span` is not exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `trace_id` and `span_id` (hex) of span `id` in `dispatch`, for log lines; `None` when
/// it is not an exported span. Must not be called while holding that span's extensions.
pub fn span_ids(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn settings(vars: &[(&str, &str)]) -> Result<Option<ExportSettings>, ConfigError> {
        ExportSettings::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_settings_come_from_the_standard_variables_and_bad_ones_are_named() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[(ENDPOINT, "  ")]), Ok(None));
        let s = settings(&[(ENDPOINT, "https://otlp.example:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.endpoint_var, s.tls, s.protocol, s.timeout),
            (
                ENDPOINT,
                true,
                Protocol::HttpBinary,
                Duration::from_secs(10)
            )
        );
        let s = settings(&[
            (ENDPOINT, "http://a:4318"),
            (TRACES_ENDPOINT, "http://b:4317"),
            (PROTOCOL, "http/protobuf"),
            (TRACES_PROTOCOL, "GRPC"),
            (TIMEOUT, "100"),
            (TRACES_TIMEOUT, "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint_var, s.tls, s.protocol, s.timeout),
            (
                TRACES_ENDPOINT,
                false,
                Protocol::Grpc,
                Duration::from_millis(2500)
            )
        );
        let e = settings(&[(ENDPOINT, "http://a:4318"), (PROTOCOL, "http/json")]).unwrap_err();
        assert_eq!(e.var, PROTOCOL);
        assert!(e.to_string().contains("http/json"), "{e}");
        let e = settings(&[(ENDPOINT, "http://a:4318"), (TIMEOUT, "10s")]).unwrap_err();
        assert_eq!(e.var, TIMEOUT);
        let e = settings(&[(ENDPOINT, "http://a:4318"), (COMPRESSION, "gzip")]).unwrap_err();
        assert_eq!(e.var, COMPRESSION);
        assert!(settings(&[(ENDPOINT, "http://a:4318"), (COMPRESSION, "none")]).is_ok());
    }

    /// Keeps every ended span, so a test can look at parents.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn with_tracing(f: impl FnOnce()) -> Vec<SpanData> {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let t = Tracing {
            tracer: provider.tracer("test"),
            provider,
        };
        let subscriber = tracing_subscriber::registry().with(t.layer());
        tracing::subscriber::with_default(subscriber, f);
        t.shutdown();
        kept.0.lock().unwrap().clone()
    }

    #[test]
    fn a_child_keeps_the_trace_and_points_at_its_parent() {
        let mut carried = String::new();
        let spans = with_tracing(|| {
            let consume = tracing::info_span!("herald.consume");
            set_parent(&consume, Some(TP));
            carried = traceparent(&consume).unwrap();
            let deliver = tracing::info_span!(parent: None, "herald.deliver");
            set_parent(&deliver, Some(&carried));
            drop(deliver);
            drop(consume);
        });
        assert!(carried.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(carried.ends_with("-01"), "sampled: {carried}");
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let (consume, deliver) = (by_name("herald.consume"), by_name("herald.deliver"));
        let trace = consume.span_context.trace_id().to_string();
        assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(consume.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(deliver.span_context.trace_id().to_string(), trace);
        assert_eq!(deliver.parent_span_id, consume.span_context.span_id());
        assert_eq!(
            carried,
            format!("00-{trace}-{}-01", consume.span_context.span_id())
        );
    }

    #[test]
    fn no_parent_or_a_bad_one_starts_a_new_trace() {
        let spans = with_tracing(|| {
            for tp in [None, Some("nonsense"), Some("00-abc")] {
                let s = tracing::info_span!(parent: None, "x");
                set_parent(&s, tp);
                assert!(traceparent(&s).is_some());
            }
        });
        assert_eq!(spans.len(), 3);
        for s in &spans {
            assert_eq!(s.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        }
        assert_ne!(
            spans[0].span_context.trace_id(),
            spans[1].span_context.trace_id()
        );
    }

    #[test]
    fn a_span_that_is_not_exported_carries_nothing() {
        assert_eq!(traceparent(&tracing::Span::none()), None);
    }
}
