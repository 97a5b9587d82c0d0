//! `GET /metrics`: this process's Prometheus metrics (herald-telemetry), every series labelled
//! with the node id and role.
pub struct Metrics {
    role: &'static str,
    node_id: String,
}

impl Metrics {
    pub fn new(role: &'static str, node_id: String) -> Self {
        Self { role, node_id }
    }

    pub fn render(&self) -> String {
        herald_telemetry::metrics().render(&self.node_id, self.role)
    }
}
