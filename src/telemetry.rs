//! Logging. JSON lines for the production roles, readable text for standalone and the CLI.
//!
//! A JSON line is one object: `timestamp`, `level`, `target`, `node` (HERALD_NODE_ID, so lines
//! from many nodes can be merged), `message` and the event's own fields (`event_id`,
//! `key_id`, `connection`, ...). Raw virtual keys are never a field: only key ids and hashes
//! are logged (tests/operations.rs checks a debug-level run).
use crate::configuration::LogFormat;
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub fn init(format: LogFormat, node: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore it.
    let _ = match format {
        LogFormat::Json => builder
            .event_format(JsonLine {
                node: node.to_owned(),
            })
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Formats one event as a JSON object on one line.
struct JsonLine {
    node: String,
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
        writeln!(writer, "{}", json_line(&self.node, event))
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
