//! Test harness: `spawn_app()` starts a real Herald node in this process on 127.0.0.1:0 with
//! its own PostgreSQL database, AMQP queue names and Redis prefix, against the real services,
//! so tests run in parallel. A raw SignalR client speaks the wire protocol.
#![allow(dead_code, clippy::unwrap_used)]

pub mod process;

use herald::configuration::{Overrides, Settings};
use herald::startup::{Application, Role};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MASTER_KEY: &str = "test-master-key-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub queue: String,
    /// The MassTransit namespace this node's queue is bound to: `<queue>.ns`, so a test's
    /// publishes reach only its own queue (the shared `ConduitLLM.Core.Events:*` exchanges
    /// would fan every test's messages out to every other test's queue).
    pub namespace: String,
    pub database: String,
    pub redis_prefix: String,
    stop: watch::Sender<bool>,
}

/// True when a missing precondition must fail the test rather than skip it: under the test
/// command (`scripts/test` exports `HERALD_TEST_STRICT=1`) or CI (docs/testing.md).
pub fn strict() -> bool {
    ["HERALD_TEST_STRICT", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

/// A test that cannot run here: fails under `strict()`, else says so on the real stderr (not
/// the captured test output, so a bare `cargo test` shows it) and lets the caller return.
pub fn skip(test: &str, why: &str) {
    assert!(
        !strict(),
        "{test}: precondition missing ({why}); HERALD_TEST_STRICT/CI make that a failure"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// A fresh name: `prefix`, the run's tag, 12 random hex digits. The tag (`HERALD_TEST_RUN`,
/// set by `scripts/test`) lets the test command find and count everything its run created
/// among what concurrent runs on the same services create.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}{:012x}", run_tag(), rand::random::<u64>() >> 16)
}

/// `HERALD_TEST_RUN` reduced to lowercase letters and digits (it goes into database, queue and
/// Redis key names); empty outside the test command.
pub fn run_tag() -> String {
    std::env::var("HERALD_TEST_RUN")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect()
}

pub async fn create_database() -> String {
    let name = unique("herald_it_");
    let (client, conn) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    name
}

pub fn database_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// A standalone node on real RabbitMQ, Redis and PostgreSQL.
pub async fn spawn_app() -> TestApp {
    let database = create_database().await;
    spawn_node(
        &database,
        &unique("herald.test."),
        &unique("herald-it-"),
        "test-node",
        Bindings::Private,
        REDIS_URL,
    )
    .await
}

/// A standalone node bound to Conduit's real `ConduitLLM.Core.Events:*` exchanges (the
/// production default). Only the test that proves the default topology should use it.
pub async fn spawn_app_on_conduit_exchanges() -> TestApp {
    let database = create_database().await;
    spawn_node(
        &database,
        &unique("herald.test."),
        &unique("herald-it-"),
        "test-node",
        Bindings::Default,
        REDIS_URL,
    )
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Bindings {
    /// `<queue>.ns:<Type>` for every event type.
    Private,
    /// Herald's default: `ConduitLLM.Core.Events:<Type>`.
    Default,
}

/// `n` nodes sharing one database, queue (competing consumers) and Redis prefix: a cluster.
pub async fn spawn_cluster(n: usize) -> Vec<TestApp> {
    spawn_cluster_on(n, REDIS_URL).await
}

/// `spawn_cluster` with the backplane on `redis_url` (e.g. a Redis Cluster).
pub async fn spawn_cluster_on(n: usize, redis_url: &str) -> Vec<TestApp> {
    let database = create_database().await;
    let (queue, prefix) = (unique("herald.test."), unique("herald-it-"));
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(
            spawn_node(
                &database,
                &queue,
                &prefix,
                &format!("node-{i}"),
                Bindings::Private,
                redis_url,
            )
            .await,
        );
    }
    nodes
}

async fn spawn_node(
    database: &str,
    queue: &str,
    redis_prefix: &str,
    node_id: &str,
    bindings: Bindings,
    redis_url: &str,
) -> TestApp {
    let namespace = match bindings {
        Bindings::Private => format!("{queue}.ns"),
        Bindings::Default => herald_ingest::amqp::MASSTRANSIT_NAMESPACE.to_string(),
    };
    let bind = herald_domain::vocabulary::bus_names()
        .map(|t| format!("{namespace}:{t}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("HERALD_LISTEN", "127.0.0.1:0".to_string()),
        ("HERALD_AMQP_URL", AMQP_URL.to_string()),
        ("HERALD_REDIS_URL", redis_url.to_string()),
        ("HERALD_DATABASE_URL", database_url(database)),
        ("HERALD_MASTER_KEY", MASTER_KEY.to_string()),
        ("HERALD_AMQP_QUEUE", queue.to_string()),
        ("HERALD_REDIS_PREFIX", redis_prefix.to_string()),
        ("HERALD_MIGRATE", "true".to_string()),
        ("HERALD_NODE_ID", node_id.to_string()),
    ]);
    if bindings == Bindings::Private {
        vars.insert("HERALD_AMQP_BIND", bind);
    }
    let settings = Settings::load(&Overrides::default(), |k| vars.get(k).cloned()).unwrap();
    let app = Application::build(Role::Standalone, settings)
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(app.run(rx));
    let t = TestApp {
        addr,
        queue: queue.to_string(),
        namespace,
        database: database.to_string(),
        redis_prefix: redis_prefix.to_string(),
        stop,
    };
    t.wait_ready().await;
    t
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        delete_amqp_objects(&self.queue, &self.namespace);
    }
}

/// Deletes a test's queue, its `.dead` and `.retry` queues and, for a private namespace
/// (`<queue>.ns`), its exchanges — never Conduit's shared ones. Quorum queues are heavy: leaving
/// one set per test behind wedges the broker after many runs. Best effort, on a thread of its
/// own (callers may be inside the test runtime).
pub fn delete_amqp_objects(queue: &str, namespace: &str) {
    let queue = queue.to_owned();
    let exchanges: Vec<String> = if namespace.starts_with(&queue) {
        herald_domain::vocabulary::bus_names()
            .map(|t| format!("{namespace}:{t}"))
            .chain([queue.clone()])
            .collect()
    } else {
        Vec::new()
    };
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
            else {
                return;
            };
            if let Ok(ch) = conn.create_channel().await {
                for q in [
                    queue.clone(),
                    format!("{queue}.dead"),
                    format!("{queue}.retry"),
                ] {
                    let _ = ch
                        .queue_delete(
                            q.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await;
                }
                for e in &exchanges {
                    let _ = ch
                        .exchange_delete(
                            e.as_str().into(),
                            lapin::options::ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
        });
    })
    .join();
}

/// Waits (bounded) until the node at `addr` answers `/readyz` with 200.
pub async fn wait_ready_at(addr: SocketAddr) {
    for _ in 0..200 {
        if http(addr, "GET", "/readyz", &[], "").await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node at {addr} never became ready");
}

/// Creates a key through a node's admin API (`POST /v1/keys`, master key); returns the raw key.
pub async fn create_key_at(addr: SocketAddr, id: i64, budget: Option<&str>) -> String {
    let body = match budget {
        Some(b) => format!(r#"{{"id":{id},"name":"k{id}","budget":{b}}}"#),
        None => format!(r#"{{"id":{id},"name":"k{id}"}}"#),
    };
    let auth = format!("Bearer {MASTER_KEY}");
    let r = http(
        addr,
        "POST",
        "/v1/keys",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["key"].as_str().unwrap().to_string()
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    HttpResponse { status, body }
}

impl TestApp {
    pub async fn wait_ready(&self) {
        wait_ready_at(self.addr).await;
    }

    /// Creates a key through the admin API; returns the raw key.
    pub async fn create_key(&self, id: i64, budget: Option<&str>) -> String {
        create_key_at(self.addr, id, budget).await
    }

    /// The MassTransit fanout exchange of `event_type` this node is bound to.
    pub fn exchange(&self, event_type: &str) -> String {
        format!("{}:{event_type}", self.namespace)
    }

    pub fn ws_url(&self, hub: &str, query: &str) -> String {
        format!("ws://{}{hub}?{query}", self.addr)
    }
}

/// Publishes raw bytes to an exchange (declared durable `kind` first, as herald would).
pub async fn amqp_publish(
    exchange: &str,
    kind: lapin::ExchangeKind,
    routing_key: &str,
    body: &[u8],
    content_type: &str,
) {
    amqp_publish_many(&[(
        exchange.to_string(),
        kind,
        routing_key.to_string(),
        body.to_vec(),
        content_type,
    )])
    .await;
}

/// A MassTransit envelope of SpendUpdated, as Conduit publishes it (PascalCase body).
pub fn masstransit_spend(message_id: &str, key_id: i64, amount: &str, total: &str) -> String {
    format!(
        r#"{{"messageId":"{message_id}","conversationId":"c-{message_id}","sourceAddress":"rabbitmq://localhost/conduit","destinationAddress":"rabbitmq://localhost/ConduitLLM.Core.Events:SpendUpdated","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],"message":{{"KeyId":{key_id},"Amount":{amount},"NewTotalSpend":{total},"RequestId":"req-{message_id}","Model":"gpt-4o","Provider":"openai"}},"sentTime":"2026-11-22T10:00:00.000Z","headers":{{}}}}"#
    )
}

/// Publishes many messages over one connection: (exchange, kind, routing key, body, content type).
pub async fn amqp_publish_many(messages: &[(String, lapin::ExchangeKind, String, Vec<u8>, &str)]) {
    amqp_publish_with_headers(messages, &[]).await;
}

/// `amqp_publish_many`, every message carrying `headers` (e.g. `traceparent`).
pub async fn amqp_publish_with_headers(
    messages: &[(String, lapin::ExchangeKind, String, Vec<u8>, &str)],
    headers: &[(&str, &str)],
) {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            (*k).into(),
            lapin::types::AMQPValue::LongString((*v).into()),
        );
    }
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut declared = std::collections::HashSet::new();
    for (exchange, kind, routing_key, body, content_type) in messages {
        if declared.insert(exchange.clone()) {
            ch.exchange_declare(
                exchange.as_str().into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        ch.basic_publish(
            exchange.as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            body.as_slice(),
            BasicProperties::default()
                .with_content_type((*content_type).into())
                .with_delivery_mode(2)
                .with_headers(table.clone()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Publishes a MassTransit SpendUpdated to the SpendUpdated exchange `app` is bound to.
pub async fn publish_spend(
    app: &TestApp,
    message_id: &str,
    key_id: i64,
    amount: &str,
    total: &str,
) {
    let body = masstransit_spend(message_id, key_id, amount, total);
    amqp_publish(
        &app.exchange("SpendUpdated"),
        lapin::ExchangeKind::Fanout,
        "",
        body.as_bytes(),
        "application/vnd.masstransit+json",
    )
    .await;
}

/// What `SignalR::next_or_close` found.
#[derive(Debug)]
pub enum Next {
    Message(Value),
    /// The socket closed (close frame, end of stream or error).
    Closed,
    /// Nothing arrived within the wait; the socket is still open.
    Silent,
}

/// A SignalR JSON-protocol client over WebSocket: the shared test client
/// (`herald-signalr-client`) with this suite's conventions.
pub struct SignalR(herald_signalr_client::Client);

pub const RS: char = herald_signalr_client::codec::RS;

/// How long a handshake or a hub method's completion may take.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

impl SignalR {
    /// Connects (skipNegotiation), sends the handshake and checks the empty response.
    pub async fn connect(url: &str) -> Result<SignalR, herald_signalr_client::ConnectError> {
        herald_signalr_client::Client::connect(url, ANSWER_WAIT)
            .await
            .map(SignalR)
    }

    /// The next protocol message; `None` when the socket closes or after `wait`.
    async fn next_raw(&mut self, wait: Duration) -> Option<Value> {
        self.0.next_message(wait).await.ok().flatten()
    }

    /// Invokes a hub method and returns its Completion message; other messages that arrive
    /// meanwhile stay queued, in order.
    pub async fn invoke(&mut self, target: &str, arguments: Value) -> Value {
        self.0
            .invoke(target, arguments, ANSWER_WAIT)
            .await
            .unwrap_or_else(|e| panic!("completion: {e}"))
    }

    /// The next protocol message, told apart from a closed socket and from silence (which
    /// `next_raw_message` both report as `None`).
    pub async fn next_or_close(&mut self, wait: Duration) -> Next {
        match self.0.next_message(wait).await {
            Ok(Some(m)) => Next::Message(m),
            Ok(None) => Next::Closed,
            Err(herald_signalr_client::TimedOut) => Next::Silent,
        }
    }

    /// Invocations (target, first argument) until every event id of `markers` has arrived
    /// (the markers included), each within `wait`; panics naming what arrived if one does not.
    /// A marker published after an unwanted event, on the audience the unwanted event would
    /// use, proves by its arrival that the unwanted one is not coming (stream order).
    pub async fn until_markers(
        &mut self,
        markers: &[&str],
        wait: Duration,
    ) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let mut missing: Vec<&str> = markers.to_vec();
        while !missing.is_empty() {
            let Some((name, arg)) = self.next_invocation(wait).await else {
                let ids: Vec<String> = seen
                    .iter()
                    .map(|(n, a): &(String, Value)| format!("{n} {}", a["eventId"]))
                    .collect();
                panic!("markers {missing:?} did not arrive within {wait:?}; got {ids:?}");
            };
            missing.retain(|m| arg["eventId"].as_str() != Some(*m));
            seen.push((name, arg));
        }
        seen
    }

    /// The next protocol message of any type; `None` when the socket closes or after `wait`.
    pub async fn next_raw_message(&mut self, wait: Duration) -> Option<Value> {
        self.next_raw(wait).await
    }

    /// The next invocation (type 1), skipping pings; `None` after `wait`.
    pub async fn next_invocation(&mut self, wait: Duration) -> Option<(String, Value)> {
        loop {
            let m = self.next_raw(wait).await?;
            if m["type"] == 1 {
                return Some((
                    m["target"].as_str().unwrap_or("").to_string(),
                    m["arguments"][0].clone(),
                ));
            }
        }
    }

    /// The raw text of the next invocation record, for byte-exact checks (other records before
    /// it, such as pings, are skipped; records after it stay queued).
    pub async fn next_text(&mut self, wait: Duration) -> Option<String> {
        loop {
            let record = self.0.next_record(wait).await.ok().flatten()?;
            let value: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
            if value["type"] == 1 {
                return Some(record);
            }
        }
    }
}

/// Connect status code of a WebSocket upgrade attempt (401 expected for bad keys).
pub async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}
