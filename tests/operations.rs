//! Issue 6: what an operator sees. Herald runs as real processes here (metrics are per process,
//! so in-process nodes of other tests cannot move these counters), against the real services.
#![allow(clippy::unwrap_used)]
mod common;

use common::process::*;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn metrics_move_by_the_right_amounts_after_real_traffic() {
    let real = real_env("ops-metrics").await;
    let (env, ns) = (real.vars.clone(), real.ns.clone());
    let node = Herald::start(&["standalone"], &env);
    node.wait_ready().await;
    let key = node.create_key(7, "10").await;
    let before = node.metrics().await;
    assert!(before.contains("# HELP herald_events_delivered_total "));
    assert!(before.contains("# TYPE herald_delivery_latency_seconds histogram"));
    assert_eq!(
        sample(&before, "herald_build_info", &[("node", "ops-metrics")]),
        1.0
    );

    let bad = upgrade_status(&format!(
        "ws://{}/hubs/spend?access_token=condt_{}",
        node.addr,
        "0".repeat(32)
    ))
    .await;
    assert_eq!(bad, 401);
    let mut client = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();

    let exchange = format!("{ns}:SpendUpdated");
    // 1 → 1.00 (10%), 6 → 6.00 (60%: the 50% alert), the same message again (a redelivery),
    // and one the consumer must dead-letter.
    publish_mt(&exchange, &masstransit_spend("ops-1", 7, "1", "1"), &[]).await;
    publish_mt(&exchange, &masstransit_spend("ops-2", 7, "5", "6"), &[]).await;
    publish_mt(&exchange, &masstransit_spend("ops-2", 7, "5", "6"), &[]).await;
    publish_mt(&exchange, "{not json", &[]).await;
    let mut names = Vec::new();
    while names.len() < 3 {
        let (name, _) = client.next_invocation(WAIT).await.expect("an event");
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["BudgetAlert", "SpendUpdate", "SpendUpdate"]);

    // The consumer acks the last two after the client saw the first ones: poll until it has.
    let mut after = node.metrics().await;
    for _ in 0..100 {
        let consumed = sample(
            &after,
            "herald_messages_consumed_total",
            &[("type", "SpendUpdated")],
        );
        let dead = sample(&after, "herald_messages_dead_lettered_total", &[]);
        if consumed >= 3.0 && dead >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = node.metrics().await;
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let spend = [("hub", "spend")];
    assert_eq!(
        delta(
            "herald_messages_consumed_total",
            &[("type", "SpendUpdated")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "herald_messages_dead_lettered_total",
            &[("reason", "rejected")]
        ),
        1.0
    );
    // Two updates and one alert reached the client; the repeat was not delivered again.
    assert_eq!(delta("herald_events_delivered_total", &spend), 3.0);
    assert_eq!(
        delta("herald_budget_alerts_fired_total", &[("threshold", "50")]),
        1.0
    );
    // Every publish goes to the key and to admin; the repeat is handed over too (the backplane
    // drops it), so 3 updates + 1 alert per audience.
    assert_eq!(
        delta("herald_events_published_total", &[("audience", "key")]),
        4.0
    );
    assert_eq!(
        delta("herald_events_published_total", &[("audience", "admin")]),
        4.0
    );
    assert_eq!(delta("herald_backplane_publish_seconds_count", &[]), 4.0);
    assert!(delta("herald_delivery_latency_seconds_count", &[]) >= 3.0);
    assert_eq!(sample(&after, "herald_connections", &spend), 1.0);
    assert_eq!(delta("herald_connections_opened_total", &spend), 1.0);
    assert_eq!(
        delta(
            "herald_connections_rejected_total",
            &[("reason", "unauthorized")]
        ),
        1.0
    );

    drop(client);
    let mut gauge = 1.0;
    for _ in 0..100 {
        gauge = sample(&node.metrics().await, "herald_connections", &spend);
        if gauge == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge, 0.0, "a closed connection leaves the gauge");
}

async fn readyz(addr: SocketAddr) -> (u16, Value) {
    let r = http(addr, "GET", "/readyz", &[], "").await;
    (r.status, r.json())
}

#[tokio::test]
async fn readyz_is_503_while_redis_is_down_and_200_again_after_it_returns() {
    let port = free_port();
    let dir = std::env::temp_dir().join(unique("herald-ops-redis-"));
    let mut redis = PrivateRedis::start_on(port, dir.clone());
    let node = Herald::start(
        &["standalone"],
        &[
            ("HERALD_REDIS_URL", format!("redis://127.0.0.1:{port}/")),
            ("HERALD_NODE_ID", "ops-ready".to_owned()),
        ],
    );
    node.wait_ready().await;
    assert_eq!(
        http(node.addr, "GET", "/healthz", &[], "").await.status,
        200
    );

    redis.stop();
    let mut down = (0, Value::Null);
    for _ in 0..100 {
        down = readyz(node.addr).await;
        if down.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(down.0, 503, "{}", down.1);
    assert_eq!(down.1["failing"], serde_json::json!(["redis"]));
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(
        http(node.addr, "GET", "/healthz", &[], "").await.status,
        200
    );

    let _redis = PrivateRedis::start_on(port, dir);
    let mut up = (0, Value::Null);
    for _ in 0..200 {
        up = readyz(node.addr).await;
        if up.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.0, 200, "{}", up.1);
}

#[tokio::test]
async fn logs_are_json_lines_with_node_event_and_key_ids_and_never_a_raw_key() {
    let real = real_env("ops-logs").await;
    let (mut env, ns) = (real.vars.clone(), real.ns.clone());
    env.push(("HERALD_LOG_FORMAT", "json".to_owned()));
    env.push(("RUST_LOG", "debug,lapin=warn".to_owned()));
    let node = Herald::start(&["standalone"], &env);
    node.wait_ready().await;
    let key = node.create_key(9, "100").await;
    let unknown = format!("condt_{}", "7".repeat(32));
    // The raw key in every place a client may put it, and an unknown one.
    let mut a = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();
    let status = upgrade_status(&format!("ws://{}/hubs/spend?api_key={unknown}", node.addr)).await;
    assert_eq!(status, 401);
    let neg = http(
        node.addr,
        "POST",
        "/hubs/spend/negotiate?negotiateVersion=1",
        &[("X-API-Key", &key)],
        "",
    )
    .await;
    assert_eq!(neg.status, 200, "{}", neg.body);
    publish_mt(
        &format!("{ns}:SpendUpdated"),
        &masstransit_spend("log-1", 9, "1", "1"),
        &[],
    )
    .await;
    a.next_invocation(WAIT).await.expect("SpendUpdate");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines = node.stop();
    assert!(lines.len() > 5, "debug logging wrote lines: {lines:?}");
    let mut objects = Vec::new();
    for line in &lines {
        assert!(!line.contains(&key), "raw key logged: {line}");
        assert!(!line.contains(&unknown), "raw key logged: {line}");
        assert!(!line.contains(&key[6..]), "raw key body logged: {line}");
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(v["node"], "ops-logs", "{line}");
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        objects.push(v);
    }
    assert!(
        objects
            .iter()
            .any(|v| v["event_id"] == "log-1" && v["key_id"] == 9),
        "a line names the event and its key: {lines:?}"
    );
    assert!(
        objects
            .iter()
            .any(|v| v["message"] == "connected" && v["key_id"] == 9),
        "connections are logged by key id: {lines:?}"
    );
}

/// A minimal OTLP/HTTP receiver (http/protobuf): decodes every `ExportTraceServiceRequest`
/// POSTed to `/v1/traces`, on as many requests per connection as the exporter sends.
async fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let store = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    assert!(head.starts_with("POST /v1/traces "), "{head}");
                    assert!(
                        head.to_ascii_lowercase()
                            .contains("content-type: application/x-protobuf"),
                        "{head}"
                    );
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())
                                .flatten()
                        })
                        .expect("a Content-Length");
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                    let request = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an OTLP protobuf body");
                    store.lock().unwrap().push(request);
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

/// One received span: its trace, name, node (`service.instance.id`), parent and own span id
/// (hex).
#[derive(Debug, Clone)]
struct Received {
    trace: String,
    name: String,
    node: String,
    parent: String,
    span: String,
}

fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<Received> {
    let mut out = Vec::new();
    for r in requests {
        for rs in &r.resource_spans {
            let node = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.instance.id")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Received {
                        trace: hex(&s.trace_id),
                        name: s.name.clone(),
                        node: node.clone(),
                        parent: hex(&s.parent_span_id),
                        span: hex(&s.span_id),
                    });
                }
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn consume_publish_and_deliver_spans_share_one_trace_across_two_processes() {
    let (receiver, requests) = otlp_receiver().await;
    let real = real_env("ops-consumer").await;
    let (env, ns) = (real.vars.clone(), real.ns.clone());
    let otlp = format!("http://{receiver}");
    let mut consumer_env = env.clone();
    consumer_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()));
    // The consumer's "processed" line is at debug level.
    consumer_env.push(("RUST_LOG", "info,herald_ingest=debug".to_owned()));
    let mut gateway_env: Vec<(&str, String)> = env
        .into_iter()
        .filter(|(k, _)| *k != "HERALD_NODE_ID" && *k != "HERALD_MIGRATE")
        .collect();
    gateway_env.push(("HERALD_NODE_ID", "ops-gateway".to_owned()));
    gateway_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
    gateway_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()));
    let consumer = Herald::start(&["consume"], &consumer_env);
    consumer.wait_ready().await;
    let gateway = Herald::start(&["serve"], &gateway_env);
    gateway.wait_ready().await;
    let key = gateway.create_key(11, "100").await;
    let mut client = SignalR::connect(&format!(
        "ws://{}/hubs/spend?access_token={key}",
        gateway.addr
    ))
    .await
    .unwrap();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    publish_mt(
        &format!("{ns}:SpendUpdated"),
        &masstransit_spend("trace-1", 11, "1", "1"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    let (name, _) = client.next_invocation(WAIT).await.expect("SpendUpdate");
    assert_eq!(name, "SpendUpdate");

    // The SDK batches: spans arrive within its schedule delay (5 s by default).
    let mut found = Vec::new();
    for _ in 0..150 {
        found = spans(&requests.lock().unwrap())
            .into_iter()
            .filter(|s| s.trace == trace)
            .collect();
        let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
        if ["herald.consume", "herald.publish", "herald.deliver"]
            .iter()
            .all(|n| names.contains(n))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_name: HashMap<&str, &Received> = found.iter().map(|s| (s.name.as_str(), s)).collect();
    let consume = by_name.get("herald.consume").expect("consume span");
    let publish = by_name.get("herald.publish").expect("publish span");
    let deliver = by_name.get("herald.deliver").expect("deliver span");
    assert_eq!(consume.node, "ops-consumer");
    assert_eq!(publish.node, "ops-consumer");
    assert_eq!(
        deliver.node, "ops-gateway",
        "delivered by the other process"
    );
    assert_eq!(
        consume.parent, parent,
        "consume continues the bus message's trace"
    );
    assert_eq!(
        publish.parent, consume.span,
        "publish is a child of consume"
    );
    assert_eq!(
        deliver.parent, consume.span,
        "deliver is a child of consume"
    );

    // The consumer's log line for this event carries the same trace, and the consume span.
    let lines = tokio::task::spawn_blocking(move || consumer.stop())
        .await
        .unwrap();
    let processed: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "processed" && v["event_id"] == "trace-1")
        .collect();
    assert_eq!(processed.len(), 1, "one processed line: {lines:?}");
    assert_eq!(processed[0]["trace_id"], trace, "{:?}", processed[0]);
    assert_eq!(
        processed[0]["span_id"],
        consume.span.as_str(),
        "{:?}",
        processed[0]
    );
}

/// Names of `herald_*` and `process_*` metrics mentioned in `text`, without histogram suffixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["herald_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn the_dashboard_and_the_docs_name_only_metrics_herald_exports() {
    let exported: std::collections::BTreeSet<String> = herald_telemetry::metrics()
        .render("n", "r")
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 15, "{exported:?}");
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!(
        "{root}/deploy/compose/grafana/dashboards/herald.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let used = metric_names(&exprs.join("\n"));
    let docs = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    // The metrics section (elsewhere `herald_*` names crates, e.g. in RUST_LOG examples).
    let section = docs
        .split_once("**`GET /metrics`**")
        .and_then(|(_, rest)| rest.split_once("### Traces"))
        .map(|(metrics, _)| metrics)
        .expect("docs/operations.md has the metrics section");
    let documented = metric_names(section);
    for name in used.iter().chain(&documented) {
        assert!(exported.contains(name), "{name} is not exported");
    }
    // And every exported metric is on the dashboard and in the docs.
    for name in &exported {
        if name != "herald_build_info" {
            assert!(used.contains(name), "{name} is missing from the dashboard");
        }
        assert!(
            documented.contains(name),
            "{name} is missing from docs/operations.md"
        );
    }
}
