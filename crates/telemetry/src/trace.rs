//! Trace spans: W3C trace context in, OTLP/HTTP JSON out.
//!
//! Herald makes three spans per event: `herald.consume` (the consumer, a child of the bus
//! message's `traceparent` or a new root), `herald.publish` (the backplane write) and
//! `herald.deliver` (one per gateway node that dispatches the event to its connections, a child
//! of the `traceparent` carried in the Redis envelope). Spans are sent only when an exporter is
//! installed; otherwise ending a span costs nothing but the clock read.
//!
//! The exporter speaks OTLP/HTTP with JSON bodies (`POST {endpoint}/v1/traces`,
//! `Content-Type: application/json`), which every OpenTelemetry Collector accepts on 4318,
//! over plain HTTP: no TLS and no protobuf/gRPC stack in the binary. Spans are batched, and
//! dropped (counted, logged) rather than queued without bound when the collector is down.
use std::fmt::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A span's identity, as carried by a W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else (or all-zero ids) is `None`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        let mut flag = [0u8; 1];
        hex::decode_to_slice(flags, &mut flag).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// What kind of work a span is, as OTLP numbers it.
#[derive(Debug, Clone, Copy)]
pub enum SpanKind {
    Internal = 1,
    Producer = 4,
    Consumer = 5,
}

/// A span in progress; `end()` records it.
#[derive(Debug)]
pub struct Span {
    name: &'static str,
    kind: SpanKind,
    context: SpanContext,
    parent: Option<[u8; 8]>,
    start: SystemTime,
    attributes: Vec<(&'static str, String)>,
    error: Option<String>,
}

impl Span {
    /// Starts a span: a child of `parent` (a `traceparent` value) when it parses, else a root.
    pub fn start(name: &'static str, kind: SpanKind, parent: Option<&str>) -> Self {
        let parent = parent.and_then(SpanContext::parse);
        let context = SpanContext {
            trace_id: parent.map_or_else(random_trace_id, |p| p.trace_id),
            span_id: random_span_id(),
            sampled: parent.is_none_or(|p| p.sampled),
        };
        Self {
            name,
            kind,
            context,
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// The `traceparent` a child of this span should carry.
    pub fn traceparent(&self) -> String {
        self.context.traceparent()
    }

    pub fn set(&mut self, key: &'static str, value: impl ToString) {
        self.attributes.push((key, value.to_string()));
    }

    pub fn fail(&mut self, error: impl ToString) {
        self.error = Some(error.to_string());
    }

    pub fn end(self) {
        let Some(tx) = EXPORTER.get() else {
            return;
        };
        if !self.context.sampled {
            return;
        }
        let end = SystemTime::now();
        if tx.try_send(FinishedSpan { span: self, end }).is_err() {
            let n = DROPPED.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "trace export queue full; dropping spans");
            }
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

#[derive(Debug)]
struct FinishedSpan {
    span: Span,
    end: SystemTime,
}

static EXPORTER: OnceLock<mpsc::Sender<FinishedSpan>> = OnceLock::new();

/// Whether spans are exported; callers on hot paths skip building spans when not.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Where to send spans: `http://host:port` plus the path (`/v1/traces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl OtlpEndpoint {
    /// `base` is `OTEL_EXPORTER_OTLP_ENDPOINT` (the path `/v1/traces` is appended);
    /// `traces` is `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is). Only `http://` is
    /// supported; the error says why a value was refused.
    pub fn parse(base: Option<&str>, traces: Option<&str>) -> Result<Option<Self>, String> {
        let (url, append) = match (traces, base) {
            (Some(t), _) if !t.trim().is_empty() => (t.trim(), false),
            (_, Some(b)) if !b.trim().is_empty() => (b.trim(), true),
            _ => return Ok(None),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?}: only http:// endpoints are supported (OTLP/HTTP JSON; put a collector next to Herald for TLS)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let path = if append {
            format!("{}/v1/traces", path.trim_end_matches('/'))
        } else if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Some(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            path,
        }))
    }
}

/// Starts the exporter task (once per process; later calls are ignored). Call from within a
/// tokio runtime.
pub fn install_exporter(endpoint: OtlpEndpoint, service: String, node: String) {
    let (tx, rx) = mpsc::channel(8192);
    if EXPORTER.set(tx).is_ok() {
        tracing::info!(host = %endpoint.host, port = endpoint.port, path = %endpoint.path, "exporting traces over OTLP/HTTP JSON");
        tokio::spawn(export(rx, endpoint, service, node));
    }
}

const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

async fn export(
    mut rx: mpsc::Receiver<FinishedSpan>,
    endpoint: OtlpEndpoint,
    service: String,
    node: String,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match rx.recv().await {
            Some(s) => s,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch, &service, &node);
        batch.clear();
        if let Err(e) = post(&endpoint, &body).await {
            tracing::warn!(error = %e, "trace export failed; spans of this batch are lost");
        }
    }
}

/// One OTLP `ExportTraceServiceRequest` in its JSON mapping (ids in hex, times as strings).
fn encode(spans: &[FinishedSpan], service: &str, node: &str) -> String {
    let mut out = String::with_capacity(256 + spans.len() * 400);
    let _ = write!(
        out,
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{},{}]}},"scopeSpans":[{{"scope":{{"name":"herald","version":"{}"}},"spans":["#,
        attr("service.name", service),
        attr("service.instance.id", node),
        env!("CARGO_PKG_VERSION")
    );
    for (i, f) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let s = &f.span;
        let _ = write!(
            out,
            r#"{{"traceId":"{}","spanId":"{}","name":{},"kind":{},"startTimeUnixNano":"{}","endTimeUnixNano":"{}""#,
            hex::encode(s.context.trace_id),
            hex::encode(s.context.span_id),
            json_string(s.name),
            s.kind as u8,
            unix_nanos(s.start),
            unix_nanos(f.end)
        );
        if let Some(p) = s.parent {
            let _ = write!(out, r#","parentSpanId":"{}""#, hex::encode(p));
        }
        out.push_str(r#","attributes":["#);
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&attr(k, v));
        }
        out.push(']');
        match &s.error {
            Some(e) => {
                let _ = write!(
                    out,
                    r#","status":{{"code":2,"message":{}}}"#,
                    json_string(e)
                );
            }
            None => out.push_str(r#","status":{"code":1}"#),
        }
        out.push('}');
    }
    out.push_str("]}]}]}");
    out
}

fn attr(key: &str, value: &str) -> String {
    format!(
        r#"{{"key":{},"value":{{"stringValue":{}}}}}"#,
        json_string(key),
        json_string(value)
    )
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A bare HTTP/1.1 POST; one connection per batch keeps it simple and batches are rare.
async fn post(endpoint: &OtlpEndpoint, body: &str) -> Result<(), String> {
    let io = async {
        let mut s = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", endpoint.host, endpoint.port))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            endpoint.path,
            endpoint.host,
            endpoint.port,
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 64];
        let n = s.read(&mut reply).await.map_err(|e| e.to_string())?;
        let status = std::str::from_utf8(&reply[..n])
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("?")
            .to_owned();
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "timed out after 10 s".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let c = SpanContext::parse(TP).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent(), TP);
        for bad in [
            "",
            "00-abc",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_points_at_its_parent() {
        let child = Span::start("herald.consume", SpanKind::Consumer, Some(TP));
        let parent = SpanContext::parse(TP).unwrap();
        assert_eq!(child.context().trace_id, parent.trace_id);
        assert_eq!(child.parent, Some(parent.span_id));
        assert_ne!(child.context().span_id, parent.span_id);
        let grandchild = Span::start(
            "herald.deliver",
            SpanKind::Consumer,
            Some(&child.traceparent()),
        );
        assert_eq!(grandchild.context().trace_id, parent.trace_id);
        assert_eq!(grandchild.parent, Some(child.context().span_id));
    }

    #[test]
    fn no_parent_or_a_bad_one_starts_a_new_trace() {
        let a = Span::start("x", SpanKind::Internal, None);
        let b = Span::start("x", SpanKind::Internal, Some("nonsense"));
        assert_eq!(a.parent, None);
        assert_eq!(b.parent, None);
        assert_ne!(a.context().trace_id, b.context().trace_id);
    }

    #[test]
    fn endpoints_parse_and_refuse_what_cannot_be_served() {
        let e = OtlpEndpoint::parse(Some("http://collector:4318"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let e = OtlpEndpoint::parse(Some("http://c:4318/otlp/"), None)
            .unwrap()
            .unwrap();
        assert_eq!(e.path, "/otlp/v1/traces");
        let e = OtlpEndpoint::parse(Some("http://ignored:1"), Some("http://t:9/x"))
            .unwrap()
            .unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("t", 9, "/x"));
        assert_eq!(OtlpEndpoint::parse(None, None), Ok(None));
        assert_eq!(OtlpEndpoint::parse(Some("  "), None), Ok(None));
        assert!(
            OtlpEndpoint::parse(Some("https://c:4318"), None)
                .unwrap_err()
                .contains("only http://")
        );
        assert!(OtlpEndpoint::parse(Some("http://c:port"), None).is_err());
        assert!(OtlpEndpoint::parse(Some("http://:4318"), None).is_err());
    }

    #[test]
    fn the_export_body_is_otlp_json() {
        let mut s = Span::start("herald.publish", SpanKind::Producer, Some(TP));
        s.set("herald.event_id", "e\"1");
        let f = FinishedSpan {
            span: s,
            end: SystemTime::now(),
        };
        let body = encode(std::slice::from_ref(&f), "herald", "node-1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(span["name"], "herald.publish");
        assert_eq!(span["kind"], 4);
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "e\"1");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][1]["value"]["stringValue"],
            "node-1"
        );
    }
}
