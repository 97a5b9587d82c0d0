//! Logging and trace export. JSON lines for the production roles, readable text for standalone
//! and the CLI; spans go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (docs/operations.md, "Tracing").
//!
//! A JSON line is one object: `timestamp`, `level`, `target`, `node` (HERALD_NODE_ID, so lines
//! from many nodes can be merged), `message` and the event's own fields (`event_id`,
//! `key_id`, `connection`, ...), plus `trace_id` and `span_id` when it is written inside an
//! exported span. Raw virtual keys are never a field: only key ids and hashes are logged
//! (tests/operations.rs checks a debug-level run).
use crate::configuration::LogFormat;
use herald_telemetry::trace::{self, Tracing};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, filter};

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber; with `export`, also the trace exporter when one is
/// configured, returned to be shut down at exit. Errors name the `OTEL_*` variable that cannot
/// be used.
pub fn init(format: LogFormat, node: &str, export: bool) -> Result<Option<Tracing>, String> {
    let tracing = if export {
        // The SDK warns about variables it ignores while it builds: log those lines too.
        let logs_only = Dispatch::from(tracing_subscriber::registry().with(vec![log_layer(
            format,
            node,
            Arc::new(OnceLock::new()),
        )]));
        tracing::dispatcher::with_default(&logs_only, || Tracing::from_env(node))
            .map_err(|e| e.to_string())?
    } else {
        None
    };
    let dispatch = Arc::new(OnceLock::new());
    let mut layers: Vec<Boxed> = Vec::new();
    // Herald's spans are exported whatever RUST_LOG says; log events are not span events.
    if let Some(t) = &tracing {
        layers.push(Box::new(t.layer().with_filter(filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("herald")
        }))));
    }
    layers.push(log_layer(format, node, dispatch.clone()));
    let subscriber: Dispatch = tracing_subscriber::registry().with(layers).into();
    let _ = dispatch.set(subscriber.downgrade());
    // A second init (tests) is harmless; ignore it.
    let _ = subscriber.try_init();
    Ok(tracing)
}

/// The log lines to stderr, filtered by `RUST_LOG`. `dispatch` is the subscriber the layer
/// ends up in (set once built), where JSON lines look up the current span's trace ids.
fn log_layer(format: LogFormat, node: &str, dispatch: Arc<OnceLock<WeakDispatch>>) -> Boxed {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    // Colour codes only on a terminal: logs redirected to a file or a collector stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(
            fmt.event_format(JsonLine {
                node: node.to_owned(),
                dispatch,
            })
            .with_filter(filter),
        ),
        LogFormat::Text => Box::new(fmt.with_filter(filter)),
    }
}

/// Formats one event as a JSON object on one line.
struct JsonLine {
    node: String,
    /// The subscriber this formatter belongs to, for the current span's trace context.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = json_line(&self.node, event);
        if let Some((trace_id, span_id)) = self.trace_ids()
            && let Value::Object(map) = &mut line
        {
            map.insert("trace_id".into(), Value::String(trace_id));
            map.insert("span_id".into(), Value::String(span_id));
        }
        writeln!(writer, "{line}")
    }
}

impl JsonLine {
    /// The current span's ids, when it is an exported one.
    fn trace_ids(&self) -> Option<(String, String)> {
        if !trace::enabled() {
            return None;
        }
        let dispatch = self.dispatch.get()?.upgrade()?;
        let current = dispatch.current_span();
        let id = current.id()?;
        trace::span_ids(id, &dispatch)
    }
}

fn json_line(node: &str, event: &Event<'_>) -> Value {
    let meta = event.metadata();
    let mut map = Map::new();
    map.insert(
        "timestamp".into(),
        Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
    );
    map.insert("level".into(), Value::String(meta.level().to_string()));
    map.insert("target".into(), Value::String(meta.target().to_owned()));
    map.insert("node".into(), Value::String(node.to_owned()));
    event.record(&mut Fields(&mut map));
    Value::Object(map)
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}
