//! Prometheus metrics of this process, rendered in the text exposition format (v0.0.4).
//!
//! Lock-free atomics on the hot paths; a labelled family takes a read lock to find its series
//! (a write lock only the first time a label value is seen). Label values come from small fixed
//! sets (hub names, reasons, thresholds) so series cannot grow without bound.
use crate::exposition::header;
use crate::process::{ProcessStats, render_process};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds in seconds: from half a millisecond (a local fan-out) to ten seconds (a client
/// resuming after a restart).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Series of one metric, by the value of its one label.
#[derive(Debug)]
pub struct Family<M> {
    series: RwLock<BTreeMap<String, Arc<M>>>,
    make: fn() -> M,
}

impl<M> Family<M> {
    fn new(make: fn() -> M) -> Self {
        Self {
            series: RwLock::new(BTreeMap::new()),
            make,
        }
    }

    pub fn with(&self, label: &str) -> Arc<M> {
        if let Ok(map) = self.series.read()
            && let Some(m) = map.get(label)
        {
            return m.clone();
        }
        match self.series.write() {
            Ok(mut map) => map
                .entry(label.to_owned())
                .or_insert_with(|| Arc::new((self.make)()))
                .clone(),
            // A panic while holding the lock poisoned it; count into a detached series rather
            // than take the process down over a metric.
            Err(_) => Arc::new((self.make)()),
        }
    }

    fn snapshot(&self) -> Vec<(String, Arc<M>)> {
        self.series
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

impl Family<Counter> {
    /// The value of one series (0 if it was never touched); for tests and stats.
    pub fn get(&self, label: &str) -> u64 {
        self.series
            .read()
            .ok()
            .and_then(|m| m.get(label).map(|c| c.get()))
            .unwrap_or(0)
    }
}

pub struct Metrics {
    pub connections: Family<Gauge>,
    pub connections_opened: Family<Counter>,
    pub connections_rejected: Family<Counter>,
    pub consumed: Family<Counter>,
    pub consumer_redeliveries: Counter,
    pub consumer_retries: Counter,
    pub consumer_deferred: Counter,
    pub consumer_acks: Counter,
    pub consumer_lag: Gauge,
    pub consumer_inflight: Gauge,
    pub dead_lettered: Family<Counter>,
    pub published: Family<Counter>,
    /// Inbound events whose id the backplane already had, by source (`amqp`, `http`).
    pub duplicates: Family<Counter>,
    pub delivered: Family<Counter>,
    pub alerts_fired: Family<Counter>,
    pub backplane_publish_seconds: Histogram,
    pub delivery_latency_seconds: Histogram,
    pub slow_consumer_closes: Family<Counter>,
    pub reconnects: Family<Counter>,
    pub resumes: Family<Counter>,
    pub transports_opened: Family<Counter>,
    pub write_timeouts: Counter,
    /// Open HTTP connections on this process's listeners (WebSockets included).
    pub http_connections: Gauge,
    /// Connections and requests the HTTP limits refused or closed, by reason.
    pub http_refused: Family<Counter>,
}

impl Metrics {
    fn new() -> Self {
        Self {
            connections: Family::new(Gauge::default),
            connections_opened: Family::new(Counter::default),
            connections_rejected: Family::new(Counter::default),
            consumed: Family::new(Counter::default),
            consumer_redeliveries: Counter::default(),
            consumer_retries: Counter::default(),
            consumer_deferred: Counter::default(),
            consumer_acks: Counter::default(),
            consumer_lag: Gauge::default(),
            consumer_inflight: Gauge::default(),
            dead_lettered: Family::new(Counter::default),
            published: Family::new(Counter::default),
            duplicates: Family::new(Counter::default),
            delivered: Family::new(Counter::default),
            alerts_fired: Family::new(Counter::default),
            backplane_publish_seconds: Histogram::new(LATENCY_BUCKETS),
            delivery_latency_seconds: Histogram::new(LATENCY_BUCKETS),
            slow_consumer_closes: Family::new(Counter::default),
            reconnects: Family::new(Counter::default),
            resumes: Family::new(Counter::default),
            transports_opened: Family::new(Counter::default),
            write_timeouts: Counter::default(),
            http_connections: Gauge::default(),
            http_refused: Family::new(Counter::default),
        }
    }

    /// The text exposition, every series labelled with `node` (and `role`).
    pub fn render(&self, node: &str, role: &str) -> String {
        let node = escape(node);
        let base = format!("node=\"{node}\",role=\"{}\"", escape(role));
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        header(o, "herald_build_info", "gauge", "Herald version; always 1.");
        let _ = writeln!(
            o,
            "herald_build_info{{{base},version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let gauges = [(
            "herald_connections",
            "Open client connections, by hub (canonical name: spend, tasks, notifications, events, admin).",
            "hub",
            &self.connections,
        )];
        for (name, help, label, fam) in gauges {
            header(o, name, "gauge", help);
            for (v, g) in fam.snapshot() {
                let _ = writeln!(o, "{name}{{{base},{label}=\"{}\"}} {}", escape(&v), g.get());
            }
        }
        header(
            o,
            "herald_http_connections",
            "gauge",
            "Open HTTP connections on this process's listeners, WebSockets included.",
        );
        let _ = writeln!(
            o,
            "herald_http_connections{{{base}}} {}",
            self.http_connections.get()
        );
        let families: [(&str, &str, &str, &Family<Counter>); 13] = [
            (
                "herald_http_refused_total",
                "Connections and requests refused or closed by the HTTP limits, by reason (connection_limit, header_timeout, idle_timeout, body_timeout, body_too_large, content_type, auth_throttled).",
                "reason",
                &self.http_refused,
            ),
            (
                "herald_connections_opened_total",
                "Client connections accepted (handshake completed), by hub (canonical name: spend, tasks, notifications, events, admin).",
                "hub",
                &self.connections_opened,
            ),
            (
                "herald_connections_rejected_total",
                "Connection attempts refused, by reason.",
                "reason",
                &self.connections_rejected,
            ),
            (
                "herald_messages_consumed_total",
                "Bus messages processed and acked, by event type.",
                "type",
                &self.consumed,
            ),
            (
                "herald_messages_dead_lettered_total",
                "Bus messages moved to the dead-letter queue, by reason class.",
                "reason",
                &self.dead_lettered,
            ),
            (
                "herald_events_published_total",
                "Events published to the backplane, by audience kind (one per audience).",
                "audience",
                &self.published,
            ),
            (
                "herald_duplicate_events_total",
                "Inbound events dropped because their id was already published (nothing sent again), by source.",
                "source",
                &self.duplicates,
            ),
            (
                "herald_events_delivered_total",
                "Events written to client connections, by hub (canonical name: spend, tasks, notifications, events, admin).",
                "hub",
                &self.delivered,
            ),
            (
                "herald_budget_alerts_fired_total",
                "Budget alerts fired, by threshold percent.",
                "threshold",
                &self.alerts_fired,
            ),
            (
                "herald_slow_consumer_closes_total",
                "Connections closed because their outbound queue overflowed, by hub (canonical name: spend, tasks, notifications, events, admin).",
                "hub",
                &self.slow_consumer_closes,
            ),
            (
                "herald_dependency_reconnects_total",
                "Connections to a dependency lost and re-established, by dependency.",
                "dependency",
                &self.reconnects,
            ),
            (
                "herald_resumes_total",
                "Resume requests, by outcome (replayed, gap).",
                "outcome",
                &self.resumes,
            ),
            (
                "herald_transport_connections_total",
                "Client connections started, by transport (websockets, server_sent_events, long_polling).",
                "transport",
                &self.transports_opened,
            ),
        ];
        for (name, help, label, fam) in families {
            header(o, name, "counter", help);
            for (v, c) in fam.snapshot() {
                let _ = writeln!(o, "{name}{{{base},{label}=\"{}\"}} {}", escape(&v), c.get());
            }
        }
        let counters = [
            (
                "herald_consumer_redeliveries_total",
                "Deliveries the broker flagged as redelivered.",
                &self.consumer_redeliveries,
            ),
            (
                "herald_consumer_retries_total",
                "Processing attempts held and retried because a dependency was unavailable.",
                &self.consumer_retries,
            ),
            (
                "herald_consumer_deferred_total",
                "Messages set aside to retry later (e.g. a task event before its owner is known).",
                &self.consumer_deferred,
            ),
            (
                "herald_consumer_acks_total",
                "Ack frames sent to the broker; one may ack many deliveries (multiple).",
                &self.consumer_acks,
            ),
            (
                "herald_write_timeouts_total",
                "Connections closed because a write to the client did not finish within the client timeout (a client that stopped reading or polling).",
                &self.write_timeouts,
            ),
        ];
        for (name, help, c) in counters {
            header(o, name, "counter", help);
            let _ = writeln!(o, "{name}{{{base}}} {}", c.get());
        }
        header(
            o,
            "herald_consumer_lag_messages",
            "gauge",
            "Messages ready in the consumer's queue at the last check (every 5 s).",
        );
        let _ = writeln!(
            o,
            "herald_consumer_lag_messages{{{base}}} {}",
            self.consumer_lag.get()
        );
        header(
            o,
            "herald_consumer_inflight_messages",
            "gauge",
            "Deliveries being processed or waiting behind another of their partition.",
        );
        let _ = writeln!(
            o,
            "herald_consumer_inflight_messages{{{base}}} {}",
            self.consumer_inflight.get()
        );
        histogram(
            o,
            "herald_backplane_publish_seconds",
            "Time to publish one event to all its audiences on the backplane.",
            &base,
            &self.backplane_publish_seconds,
        );
        histogram(
            o,
            "herald_delivery_latency_seconds",
            "Bus to client: from the event's source time to its dispatch to this node's connections.",
            &base,
            &self.delivery_latency_seconds,
        );
        render_process(o, &base, &ProcessStats::read());
        out
    }
}

fn histogram(o: &mut String, name: &str, help: &str, base: &str, h: &Histogram) {
    header(o, name, "histogram", help);
    let mut cumulative = 0;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed));
        let _ = writeln!(o, "{name}_bucket{{{base},le=\"{bound}\"}} {cumulative}");
    }
    cumulative += h
        .buckets
        .get(h.bounds.len())
        .map_or(0, |b| b.load(Ordering::Relaxed));
    let _ = writeln!(o, "{name}_bucket{{{base},le=\"+Inf\"}} {cumulative}");
    let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(o, "{name}_sum{{{base}}} {sum}");
    let _ = writeln!(o, "{name}_count{{{base}}} {}", h.count());
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut o = String::new();
        histogram(&mut o, "x", "help", "node=\"n\"", &h);
        assert!(o.contains("x_bucket{node=\"n\",le=\"0.001\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{node=\"n\",le=\"0.01\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{node=\"n\",le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count{node=\"n\"} 3\n"), "{o}");
        assert!(o.contains("x_sum{node=\"n\"} 1.0055\n"), "{o}");
    }

    #[test]
    fn families_render_one_series_per_label_value_with_help() {
        let m = Metrics::new();
        m.delivered.with("/hubs/spend").add(3);
        m.delivered.with("/hubs/spend").inc();
        m.connections.with("/hubs/admin").inc();
        let text = m.render("node-1", "serve");
        assert!(text.contains("# HELP herald_events_delivered_total "));
        assert!(text.contains("# TYPE herald_events_delivered_total counter"));
        assert!(text.contains(
            "herald_events_delivered_total{node=\"node-1\",role=\"serve\",hub=\"/hubs/spend\"} 4\n"
        ));
        assert!(text.contains(
            "herald_connections{node=\"node-1\",role=\"serve\",hub=\"/hubs/admin\"} 1\n"
        ));
        assert_eq!(m.delivered.get("/hubs/spend"), 4);
        assert_eq!(m.delivered.get("/hubs/none"), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.dead_lettered.with("a\"b").inc();
        let text = m.render("n\\1", "consume");
        assert!(text.contains(r#"node="n\\1""#), "{text}");
        assert!(text.contains(r#"reason="a\"b""#), "{text}");
    }
}
