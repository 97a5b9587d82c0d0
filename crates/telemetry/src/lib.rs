//! What Herald tells operators about itself: Prometheus metrics and OpenTelemetry spans.
//!
//! Both are per process (a process is a node), kept in statics so the ingest, backplane and
//! gateway crates record without threading handles through every constructor. Nothing here does
//! I/O except the span exporter task, which runs only when an OTLP endpoint is configured.
mod exposition;
pub mod metrics;
mod process;
pub mod trace;

pub use metrics::metrics;
