//! The Prometheus text exposition format, shared by the herald and process series.
use std::fmt::Write;

/// `# HELP` and `# TYPE` lines of one metric.
pub(crate) fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}
