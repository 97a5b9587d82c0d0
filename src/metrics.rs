//! Prometheus text exposition of the process's own counters. The full set (DESIGN §8) grows
//! with the operations work; this is the shape it grows in.
use std::fmt::Write;

pub struct Metrics {
    role: &'static str,
    node_id: String,
}

impl Metrics {
    pub fn new(role: &'static str, node_id: String) -> Self {
        Self { role, node_id }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP herald_build_info Herald build and role.");
        let _ = writeln!(out, "# TYPE herald_build_info gauge");
        let _ = writeln!(
            out,
            "herald_build_info{{version=\"{}\",role=\"{}\",node=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.role,
            escape(&self.node_id)
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
