//! Chaos test (issue 4, item 8; docs/reliability.md): two `herald serve` gateway nodes behind haproxy, two
//! `herald consume` consumers on one queue, one client per key reconnecting with its cursor, and
//! a publisher sending SpendUpdated at a steady rate, while the test kills -9 a gateway node (and
//! starts it again on the same port), restarts Redis (which here keeps nothing on disk: a wipe),
//! restarts RabbitMQ (stop_app/start_app) and kills -9 and restarts a consumer. At the end every
//! client must hold every event of its key exactly once, in history-stream order, and every
//! budget alert must have fired exactly once. docs/reliability.md explains the figures printed.
//!
//! The Redis and the RabbitMQ it restarts are its own: a redis-server on a free port and a
//! RabbitMQ node of `scripts/private-rabbitmq`, both gone when the test ends. The machine's
//! services are only used for PostgreSQL (its own database, dropped at the end).
//!
//! Ignored by default (minutes long, and heavy on a small machine); the test command runs it
//! alone:
//!
//!     cargo test --locked --test chaos -- --ignored --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::process::{PrivateRabbit, PrivateRedis, free_port};
use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_domain::{Audience, KeyId};
use herald_gateway::cursor::Cursor;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Keys, one client each.
const KEYS: i64 = 50;
/// SpendUpdated messages per key. Each adds `STEP` to the key's total against a budget of
/// `BUDGET`, so the totals run 2, 4, … 110 and every threshold (50, 75, 90, 100) is crossed by a
/// message of its own: 50 by total 50, 75 by 76, 90 by 90, 100 by 100.
const MESSAGES_PER_KEY: u32 = 55;
const STEP: u32 = 2;
const BUDGET: u32 = 100;
const THRESHOLDS: [u32; 4] = [50, 75, 90, 100];
/// Clients (keys 1..=N) kept offline from 2 s before the Redis wipe to 2 s after it.
const OFFLINE_ACROSS_WIPE: i64 = 5;
/// A quiet key, also offline across the wipe, whose last messages are published while its
/// client is away and before the wipe, and none after: its client comes back to an empty
/// history and must still be told (ResumeGap) that it missed events.
const QUIET: i64 = KEYS + 1;
const QUIET_MESSAGES: u32 = 4;
/// Publish rate (messages per second) of the steady phase.
const RATE: f64 = 70.0;
/// Bounds that turn a hang into a failure; nothing is measured against them.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const PUBLISH_DEADLINE: Duration = Duration::from_secs(150);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// The longest fault handling (a restart of Redis or RabbitMQ) after the publishing deadline.
const SERVICE_DEADLINE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Processes

/// A process this test started; killed (SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// `herald <role>` with `env` (every inherited HERALD_* variable removed); waits for the
    /// `listening on` line. stderr (logs) goes to `<logs>/<name>.log` (appended across restarts).
    fn herald(name: &str, role: &str, env: &[(&str, String)], logs: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") || k.starts_with("OTEL_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg(role)
            .env("HERALD_MASTER_KEY", MASTER_KEY)
            .env("HERALD_NODE_ID", name)
            .env("HERALD_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().unwrap();
        // stdout is read on a thread of its own (and drained there afterwards), so a process
        // that never prints `listening on` fails the test after SETUP_DEADLINE instead of
        // blocking it; lines are read with a length limit.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                if let Some(a) = text.trim_end().strip_prefix("listening on http://")
                    && let Ok(addr) = a.parse()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(SETUP_DEADLINE) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name}: no `listening on` line within {SETUP_DEADLINE:?} ({e}; exited or \
                     hung; see {logs:?})"
                );
            }
        };
        Proc {
            name: name.to_owned(),
            child,
            addr,
        }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!("[chaos] kill -9 {} ({})", self.name, self.addr);
    }
}

async fn wait_ready(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + SETUP_DEADLINE;
    loop {
        let status = tokio::time::timeout(Duration::from_secs(2), async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => http(addr, "GET", "/readyz", &[], "").await.status,
                Err(_) => 0,
            }
        })
        .await
        .unwrap_or(0);
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// haproxy in the foreground with deploy/haproxy/haproxy.cfg rendered for our nodes (as
/// tests/js/helpers.mjs does): its `bind` on a free loopback port, its `server` lines replaced.
fn start_haproxy(servers: &[SocketAddr], logs: &Path) -> (Proc, SocketAddr) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join("deploy/haproxy/haproxy.cfg")).unwrap();
    let port = free_port();
    let mut cfg = String::new();
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if t.starts_with("server ") {
            continue;
        } else {
            cfg.push_str(line);
            cfg.push('\n');
            if line.starts_with("backend gateways") {
                for (i, s) in servers.iter().enumerate() {
                    cfg.push_str(&format!("    server node{i} {s} check inter 500ms\n"));
                }
            }
        }
    }
    let file = logs.join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&file)
        .output()
        .expect("haproxy is installed");
    assert!(
        check.status.success(),
        "haproxy -c rejected {file:?}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(logs.join("haproxy.log")).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (
        Proc {
            name: "haproxy".into(),
            child,
            addr,
        },
        addr,
    )
}

// ---------------------------------------------------------------------------------------------
// Publisher

/// One planned SpendUpdated.
struct Planned {
    key: i64,
    id: String,
}

/// A MassTransit SpendUpdated envelope with the real send time (the budget engine compares source
/// times: a later event with a lower total would re-arm a threshold, an earlier one must not).
fn spend_envelope(id: &str, key: i64, amount: u32, total: u32) -> Vec<u8> {
    let sent = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"messageId":"{id}","conversationId":"c-{id}","sourceAddress":"rabbitmq://localhost/chaos","destinationAddress":"rabbitmq://localhost/ConduitLLM.Core.Events:SpendUpdated","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],"message":{{"KeyId":{key},"Amount":{amount},"NewTotalSpend":{total},"RequestId":"req-{id}","Model":"gpt-4o","Provider":"openai"}},"sentTime":"{sent}","headers":{{}}}}"#
    ).into_bytes()
}

#[derive(Default)]
struct PublishStats {
    /// basic.publish calls, including the ones repeated.
    attempts: usize,
    /// basic.publish calls that got no confirmation (the message is published again).
    unconfirmed: usize,
    /// Connections to RabbitMQ that failed or were lost.
    connection_failures: usize,
    /// Messages the broker confirmed (measured, once per message).
    confirmed: usize,
}

/// Publishes with publisher confirms, one message at a time: a message counts as sent only when
/// the broker confirmed it (mandatory, so an unroutable message is not a confirmation). On any
/// error it reconnects with backoff and publishes the same message (same messageId) again.
struct Publisher {
    /// The private broker's AMQP URL.
    url: String,
    exchange: String,
    channel: Option<(Connection, lapin::Channel)>,
    stats: PublishStats,
}

impl Publisher {
    async fn channel(&mut self) -> Result<lapin::Channel, String> {
        if let Some((_, ch)) = &self.channel
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        if let Some((conn, _)) = self.channel.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), conn.close(200, "retry".into())).await;
        }
        let open = async {
            let conn = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            ch.exchange_declare(
                self.exchange.as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, ch))
        };
        let (conn, ch) = tokio::time::timeout(Duration::from_secs(10), open)
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        self.channel = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn try_publish(&mut self, body: &[u8]) -> Result<(), String> {
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                self.stats.connection_failures += 1;
                return Err(e);
            }
        };
        self.stats.attempts += 1;
        let confirm = async {
            let c = ch
                .basic_publish(
                    self.exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    BasicProperties::default()
                        .with_content_type("application/vnd.masstransit+json".into())
                        .with_delivery_mode(2),
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            match c {
                lapin::Confirmation::Ack(None) => Ok(()),
                other => Err(format!("not confirmed: {other:?}")),
            }
        };
        let result = match tokio::time::timeout(Duration::from_secs(10), confirm).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("confirm timed out".into()),
        };
        match result {
            Ok(()) => self.stats.confirmed += 1,
            Err(_) => self.stats.unconfirmed += 1,
        }
        result
    }

    /// Publishes until confirmed (or `deadline`).
    async fn publish(&mut self, body: &[u8], deadline: Instant) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_publish(body).await {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "publisher: no confirmation before the deadline: {e}"
                    );
                    if self.channel.take().is_some() {
                        println!("[chaos] publisher: {e}; reconnecting");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What one client received, in arrival order.
#[derive(Default)]
struct ClientLog {
    events: Vec<Received>,
    /// `ResumeGap`s received, in order.
    gaps: Vec<Gap>,
    /// When the client was taken offline (before the wipe): how many events it held and how
    /// many connections it had made by then.
    offline_at: Option<(usize, usize)>,
    cursor: Option<String>,
    /// Connections opened (handshake done).
    connections: usize,
    /// Connections opened after the first one.
    reconnects: usize,
    /// Connect attempts refused (503 while no node was ready, connection refused, timeouts).
    refused: usize,
    /// Protocol anomalies (undecodable record, event without cursor or eventId, ...).
    anomalies: Vec<String>,
}

/// One `ResumeGap` as the client saw it.
struct Gap {
    /// Index into `events` at which it arrived (how many events came before it).
    index: usize,
    /// The connection it arrived on (1 = the first).
    connection: usize,
    /// The key's position in the cursor the client held when the gap arrived (the cursor it
    /// connected with, or the last event's): the gap covers what followed this position.
    after: Option<(u64, u64)>,
    at: Instant,
}

struct Received {
    target: String,
    event_id: String,
    /// Position in the key's history stream, decoded from the cursor.
    position: (u64, u64),
    total: Option<String>,
}

fn position_of(cursor: &str, key: i64) -> Option<(u64, u64)> {
    let c = Cursor::decode(cursor).ok()?;
    let p = c.get(Audience::Key(KeyId::new(key).ok()?))?;
    Some((p.ms, p.seq))
}

enum Ended {
    Stop,
    Dropped(String),
}

/// One client of key `key`: connects through haproxy, records every invocation, and when its
/// connection ends reconnects with `?cursor=<last cursor>` (backoff with jitter, 503s retried),
/// until `stop`. With `once`, it returns after the first connection ends or `stop`.
async fn client(
    front: SocketAddr,
    key: i64,
    raw_key: String,
    log: Arc<Mutex<ClientLog>>,
    stop: Arc<AtomicBool>,
    offline: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    while !stop.load(Ordering::SeqCst) {
        if offline.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let cursor = log.lock().unwrap().cursor.clone();
        let mut url = format!("ws://{front}/hubs/spend?access_token={raw_key}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        match session(&url, key, &log, &stop, &offline, connected_before).await {
            Ok(Ended::Stop) => return,
            Ok(Ended::Dropped(_why)) => {
                connected_before = true;
                backoff = Duration::from_millis(100);
            }
            Err(_) => {
                log.lock().unwrap().refused += 1;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64);
        tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
    }
}

/// One connection: `Err` when it could not be established, else how it ended.
async fn session(
    url: &str,
    key: i64,
    log: &Mutex<ClientLog>,
    stop: &AtomicBool,
    offline: &AtomicBool,
    reconnect: bool,
) -> Result<Ended, String> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(format!(
        "{{\"protocol\":\"json\",\"version\":1}}{RS}"
    )))
    .await
    .map_err(|e| e.to_string())?;
    let mut handshaken = false;
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(Duration::from_secs(20), ws.next()) => m,
            _ = ping.tick() => {
                if handshaken && ws.send(Message::text(format!("{{\"type\":6}}{RS}"))).await.is_err() {
                    return Ok(Ended::Dropped("ping failed".into()));
                }
                continue;
            }
            _ = check.tick() => {
                if stop.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return Ok(Ended::Stop);
                }
                if offline.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    let mut log = log.lock().unwrap();
                    log.offline_at = Some((log.events.len(), log.connections));
                    return Ok(Ended::Dropped("taken offline".into()));
                }
                continue;
            }
        };
        let text = match msg {
            Err(_) => return Ok(Ended::Dropped("silent for 20 s".into())),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return if handshaken {
                    Ok(Ended::Dropped("socket closed".into()))
                } else {
                    Err("closed before the handshake".into())
                };
            }
            Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => String::from_utf8_lossy(&b).to_string(),
            Ok(Some(Ok(_))) => continue,
        };
        for record in text.split(RS).filter(|r| !r.is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(record) else {
                log.lock()
                    .unwrap()
                    .anomalies
                    .push(format!("undecodable record {record:?}"));
                continue;
            };
            if !handshaken {
                if v != Value::Object(Default::default()) {
                    return Err(format!("handshake refused: {v}"));
                }
                handshaken = true;
                let mut log = log.lock().unwrap();
                log.connections += 1;
                if reconnect {
                    log.reconnects += 1;
                }
                continue;
            }
            match v["type"].as_u64() {
                Some(1) => on_invocation(&v, key, log),
                Some(7) => return Ok(Ended::Dropped(format!("Close {v}"))),
                _ => {}
            }
        }
    }
}

fn on_invocation(v: &Value, key: i64, log: &Mutex<ClientLog>) {
    let target = v["target"].as_str().unwrap_or("").to_owned();
    let arg = &v["arguments"][0];
    let mut log = log.lock().unwrap();
    let Some(cursor) = arg["cursor"].as_str() else {
        log.anomalies.push(format!("{target} without cursor"));
        return;
    };
    if target == "ResumeGap" {
        let gap = Gap {
            index: log.events.len(),
            connection: log.connections,
            after: log.cursor.as_deref().and_then(|c| position_of(c, key)),
            at: Instant::now(),
        };
        log.gaps.push(gap);
        log.cursor = Some(cursor.to_owned());
        return;
    }
    let Some(position) = position_of(cursor, key) else {
        log.anomalies
            .push(format!("{target}: cursor does not name vkey:{key}"));
        return;
    };
    let event_id = arg["eventId"].as_str().unwrap_or("").to_owned();
    if event_id.is_empty() {
        log.anomalies.push(format!("{target} without eventId"));
    }
    if arg["virtualKeyId"].as_i64() != Some(key) {
        log.anomalies
            .push(format!("{target} {event_id} of another key: {arg}"));
    }
    log.cursor = Some(cursor.to_owned());
    log.events.push(Received {
        target,
        event_id,
        position,
        total: arg["totalSpend"].as_f64().map(|t| t.to_string()),
    });
}

// ---------------------------------------------------------------------------------------------
// The scenario

/// A row of `budget_alerts`: (alert id, threshold, generation, source event id, published).
type AlertRow = (String, i32, i32, String, bool);

/// This run's database on the machine's PostgreSQL (the private Redis and RabbitMQ take
/// everything else with them). Dropped when this goes (also after a failure).
struct Cleanup {
    database: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(20), async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                            ))
                            .await;
                    }
                })
                .await;
            });
        })
        .join();
    }
}

#[derive(Default)]
struct Timeline {
    /// When Redis answered again after the restart.
    redis_up: Option<Instant>,
}

/// Each key's history stream, (position, eventId) per entry, as it is the moment before Redis
/// is shut down: pauses every client's writes (`CLIENT PAUSE WRITE`, which also holds the
/// publish script) for longer than the reads and the shutdown take, then reads the streams.
/// The caller shuts Redis down at once, so nothing is written to this Redis after the reads.
async fn snapshot_and_pause(
    redis_url: &str,
    prefix: &str,
) -> HashMap<i64, Vec<((u64, u64), String)>> {
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query_async(&mut redis)
        .await
        .unwrap();
    read_streams(&mut redis, prefix).await
}

/// Every key's history stream: (position, eventId) per entry, in stream order.
async fn read_streams(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> HashMap<i64, Vec<((u64, u64), String)>> {
    let mut out = HashMap::new();
    for k in 1..=QUIET {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{prefix}:{{vkey:{k}}}:stream"))
            .arg("-")
            .arg("+")
            .query_async(redis)
            .await
            .unwrap();
        let entries = reply
            .ids
            .iter()
            .map(|e| {
                let (a, b) = e.id.split_once('-').unwrap();
                let data: String = e.get("e").expect("a history entry has its event");
                let v: Value = serde_json::from_str(&data).unwrap();
                let id = v["eventId"].as_str().unwrap().to_owned();
                ((a.parse().unwrap(), b.parse().unwrap()), id)
            })
            .collect();
        out.insert(k, entries);
    }
    out
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Waits until `n` messages are confirmed. Fails (rather than waiting forever) when the
/// publisher task ended first — a panic inside it is re-raised here with its own message — or
/// at `deadline`.
async fn wait_progress<T>(
    progress: &AtomicUsize,
    n: usize,
    publisher: &mut tokio::task::JoinHandle<T>,
    deadline: Instant,
) {
    while progress.load(Ordering::SeqCst) < n {
        if publisher.is_finished() {
            match publisher.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => panic!(
                    "the publisher ended at {} of {n} confirmed messages",
                    progress.load(Ordering::SeqCst)
                ),
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages confirmed before the publishing deadline",
            progress.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long (private Redis and RabbitMQ); run alone: cargo test --test chaos -- --ignored"]
async fn chaos_nothing_lost_or_duplicated_across_node_redis_rabbitmq_and_consumer_restarts() {
    let started = Instant::now();
    let logs = std::env::temp_dir().join(unique("herald-chaos-"));
    std::fs::create_dir_all(&logs).unwrap();
    println!("[chaos] process logs in {}", logs.display());

    // The Redis and RabbitMQ this test stops: its own (dropped last, after the processes).
    let mut redis = PrivateRedis::volatile_on(free_port(), logs.join("redis"));
    let rabbit = block(PrivateRabbit::start);
    let (redis_url, amqp_url) = (redis.url(), rabbit.url());
    println!("[chaos] private Redis at {redis_url}, private RabbitMQ at {amqp_url}");

    // One database, queue, MassTransit namespace and Redis prefix for the whole cluster.
    let database = create_database().await;
    let queue = unique("herald.chaos.");
    let namespace = format!("{queue}.ns");
    let prefix = unique("herald-chaos-");
    let _cleanup = Cleanup {
        database: database.clone(),
    };
    let bind = herald_domain::vocabulary::bus_names()
        .map(|t| format!("{namespace}:{t}"))
        .collect::<Vec<_>>()
        .join(",");
    let shared = vec![
        ("HERALD_REDIS_URL", redis_url.clone()),
        ("HERALD_DATABASE_URL", database_url(&database)),
        ("HERALD_REDIS_PREFIX", prefix.clone()),
    ];
    let mut consumer_env = shared.clone();
    consumer_env.extend([
        ("HERALD_LISTEN", "127.0.0.1:0".to_owned()),
        ("HERALD_AMQP_URL", amqp_url.clone()),
        ("HERALD_AMQP_QUEUE", queue.clone()),
        ("HERALD_AMQP_BIND", bind),
    ]);
    let mut first_env = consumer_env.clone();
    first_env.push(("HERALD_MIGRATE", "true".to_owned()));
    let consumer1 = block(|| Proc::herald("consumer-1", "consume", &first_env, &logs));
    wait_ready(consumer1.addr, "consumer-1").await;
    let consumer2 = block(|| Proc::herald("consumer-2", "consume", &consumer_env, &logs));
    wait_ready(consumer2.addr, "consumer-2").await;
    // Gateways have no AMQP URL (they would consume too). Fixed ports: a killed node is started
    // again on its own port, behind the same haproxy line.
    let ports = [free_port(), free_port()];
    let gateway_env = |port: u16| {
        let mut env = shared.clone();
        env.push(("HERALD_LISTEN", format!("127.0.0.1:{port}")));
        env
    };
    let mut gateways = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let g = block(|| {
            Proc::herald(
                &format!("gateway-{}", i + 1),
                "serve",
                &gateway_env(*port),
                &logs,
            )
        });
        wait_ready(g.addr, &g.name).await;
        gateways.push(Some(g));
    }
    let gateway_addrs: Vec<SocketAddr> =
        gateways.iter().map(|g| g.as_ref().unwrap().addr).collect();
    let (_haproxy, front) = start_haproxy(&gateway_addrs, &logs);
    wait_ready(front, "haproxy").await;

    // Keys with a total budget, created through haproxy.
    let auth = format!("Bearer {MASTER_KEY}");
    let mut raw_keys = BTreeMap::new();
    for k in 1..=QUIET {
        let r = http(
            front,
            "POST",
            "/v1/keys",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &format!(r#"{{"id":{k},"name":"chaos-{k}","budget":{BUDGET},"budgetPeriod":"total"}}"#),
        )
        .await;
        assert_eq!(r.status, 201, "create key {k}: {}", r.body);
        raw_keys.insert(k, r.json()["key"].as_str().unwrap().to_owned());
    }

    // One client per key through haproxy.
    let stop = Arc::new(AtomicBool::new(false));
    let mut logs_by_key: BTreeMap<i64, Arc<Mutex<ClientLog>>> = BTreeMap::new();
    let mut clients = Vec::new();
    // The first OFFLINE_ACROSS_WIPE clients go offline before Redis is wiped and come back
    // after it: their cursors point into the history that is gone.
    let offline = Arc::new(AtomicBool::new(false));
    for (&k, raw) in &raw_keys {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        logs_by_key.insert(k, log.clone());
        let offline = if k <= OFFLINE_ACROSS_WIPE || k == QUIET {
            offline.clone()
        } else {
            Arc::new(AtomicBool::new(false))
        };
        clients.push(tokio::spawn(client(
            front,
            k,
            raw.clone(),
            log,
            stop.clone(),
            offline,
        )));
    }

    // Warm-up: one message per key, so every client holds a cursor before anything fails.
    let exchange = format!("{namespace}:SpendUpdated");
    let mut publisher = Publisher {
        url: amqp_url.clone(),
        exchange: exchange.clone(),
        channel: None,
        stats: PublishStats::default(),
    };
    let run = unique("c");
    let id_of = |k: i64, j: u32| format!("{run}-k{k}-m{j}");
    let setup_deadline = Instant::now() + SETUP_DEADLINE;
    // Clients connect before the warm-up is published (else they would miss it: no cursor yet).
    loop {
        let waiting = logs_by_key
            .values()
            .filter(|l| l.lock().unwrap().connections == 0)
            .count();
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < setup_deadline,
            "{waiting} clients did not connect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for k in 1..=QUIET {
        let id = id_of(k, 1);
        publisher
            .publish(&spend_envelope(&id, k, STEP, STEP), setup_deadline)
            .await;
    }
    loop {
        let waiting = logs_by_key
            .values()
            .filter(|l| l.lock().unwrap().events.is_empty())
            .count();
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < setup_deadline,
            "{waiting} clients never received their warm-up event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[chaos] cluster up, {QUIET} clients hold a cursor after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The steady phase: round-robin over the keys, each key's totals rising.
    let plan: Vec<(Planned, u32)> = (2..=MESSAGES_PER_KEY)
        .flat_map(|j| {
            (1..=KEYS).map(move |k| {
                (
                    Planned {
                        key: k,
                        id: String::new(),
                    },
                    j,
                )
            })
        })
        .map(|(mut p, j)| {
            p.id = id_of(p.key, j);
            (p, j)
        })
        .collect();
    let total = plan.len();
    let progress = Arc::new(AtomicUsize::new(0));
    // The publisher's own deadline plus the longest fault handling (a restart) after it.
    let publish_deadline = Instant::now() + PUBLISH_DEADLINE + SERVICE_DEADLINE;
    let mut publish_task = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let deadline = t0 + PUBLISH_DEADLINE;
            for (i, (m, j)) in plan.iter().enumerate() {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / RATE)).await;
                let body = spend_envelope(&m.id, m.key, STEP, j * STEP);
                publisher.publish(&body, deadline).await;
                progress.fetch_add(1, Ordering::SeqCst);
            }
            (publisher.stats, t0.elapsed())
        })
    };

    // The faults, one after another, each at a point of the publishing.
    let mut timeline = Timeline::default();
    wait_progress(&progress, total / 10, &mut publish_task, publish_deadline).await;
    let g1 = gateways[0].take().unwrap();
    block(|| g1.kill9());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g1 = block(|| Proc::herald("gateway-1", "serve", &gateway_env(ports[0]), &logs));
    wait_ready(g1.addr, "gateway-1 (restarted)").await;
    println!("[chaos] gateway-1 started again on {}", g1.addr);
    gateways[0] = Some(g1);

    wait_progress(
        &progress,
        total * 3 / 10,
        &mut publish_task,
        publish_deadline,
    )
    .await;
    offline.store(true, Ordering::SeqCst);
    println!(
        "[chaos] clients of keys 1..={OFFLINE_ACROSS_WIPE} and {QUIET} go offline until Redis is back"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The quiet key's last messages, published while its client is away.
    let mut quiet_publisher = Publisher {
        url: amqp_url.clone(),
        exchange: exchange.clone(),
        channel: None,
        stats: PublishStats::default(),
    };
    for j in 2..=QUIET_MESSAGES {
        let id = id_of(QUIET, j);
        quiet_publisher
            .publish(
                &spend_envelope(&id, QUIET, STEP, j * STEP),
                Instant::now() + SETUP_DEADLINE,
            )
            .await;
    }
    let quiet_stats = quiet_publisher.stats;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What the wipe destroys, exactly: writes are paused (CLIENT PAUSE WRITE blocks the publish
    // script) while every key's history stream is read, and Redis is shut down before the
    // pause ends. An event in this snapshot may be lost to the wipe; no other event can be.
    let wiped = snapshot_and_pause(&redis_url, &prefix).await;
    println!("[chaos] Redis: kill -9 (nothing on disk: every stream is wiped)");
    block(|| redis.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    block(|| redis.start_again());
    timeline.redis_up = Some(Instant::now());
    println!("[chaos] Redis started again (empty)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    offline.store(false, Ordering::SeqCst);

    wait_progress(&progress, total / 2, &mut publish_task, publish_deadline).await;
    println!("[chaos] RabbitMQ (private node): stop_app");
    let restarting = Instant::now();
    block(|| rabbit.restart());
    println!(
        "[chaos] RabbitMQ: start_app done after {:.1}s",
        restarting.elapsed().as_secs_f64()
    );

    wait_progress(
        &progress,
        total * 7 / 10,
        &mut publish_task,
        publish_deadline,
    )
    .await;
    block(|| consumer1.kill9());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumer1 = block(|| Proc::herald("consumer-1", "consume", &consumer_env, &logs));
    wait_ready(consumer1.addr, "consumer-1 (restarted)").await;
    println!("[chaos] consumer-1 started again");

    let (stats, publish_time) = tokio::time::timeout_at(publish_deadline, publish_task)
        .await
        .expect("the publisher did not finish before the publishing deadline")
        .unwrap();
    println!(
        "[chaos] published and confirmed {total} messages in {:.1}s",
        publish_time.as_secs_f64()
    );

    // Every client gets everything it can still get (bounded wait).
    let pg = {
        let (client, conn) =
            tokio_postgres::connect(&database_url(&database), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client
    };
    let redis_up = timeline.redis_up.unwrap();
    // The Redis-wipe rule of docs/reliability.md: a missing event is lost to the wipe only when
    // it was in its key's stream when Redis shut down, at a position some ResumeGap of its
    // client covers (the gap's cursor is before it).
    let excused = |k: i64, log: &ClientLog, id: &str| {
        wiped
            .get(&k)
            .and_then(|entries| entries.iter().find(|(_, e)| e == id))
            .is_some_and(|(p, _)| {
                log.gaps
                    .iter()
                    .any(|g| g.at > redis_up && g.after.is_some_and(|a| a < *p))
            })
    };
    let all_ids: HashMap<i64, Vec<String>> = (1..=QUIET)
        .map(|k| {
            let n = if k == QUIET {
                QUIET_MESSAGES
            } else {
                MESSAGES_PER_KEY
            };
            (k, (1..=n).map(|j| id_of(k, j)).collect())
        })
        .collect();
    let alerts_of = |rows: &[tokio_postgres::Row]| {
        let mut by_key: HashMap<i64, Vec<AlertRow>> = HashMap::new();
        for r in rows {
            by_key.entry(r.get(1)).or_default().push((
                r.get(0),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
            ));
        }
        by_key
    };
    let alerts_query = "SELECT alert_id, key_id, threshold, generation, source_event_id, \
                        published_at IS NOT NULL FROM budget_alerts";
    let delivery_deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let alerts = alerts_of(&pg.query(alerts_query, &[]).await.unwrap());
        let mut outstanding = 0;
        for (k, log) in &logs_by_key {
            let log = log.lock().unwrap();
            let got: HashSet<&str> = log.events.iter().map(|e| e.event_id.as_str()).collect();
            let expected = all_ids[k]
                .iter()
                .map(String::as_str)
                .chain(alerts.get(k).into_iter().flatten().map(|a| a.0.as_str()));
            outstanding += expected
                .filter(|id| !(got.contains(id) || excused(*k, &log, id)))
                .count();
        }
        if outstanding == 0 {
            break;
        }
        if Instant::now() > delivery_deadline {
            println!("[chaos] {outstanding} events still missing at the delivery deadline");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A late duplicate would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a client did not stop within 30 s")
            .unwrap();
    }

    // Finally every client reconnects through haproxy with its last cursor: it must get nothing
    // it does not hold already (the replay is empty; anything in it counts as a duplicate).
    let before: usize = logs_by_key
        .values()
        .map(|l| l.lock().unwrap().events.len())
        .sum();
    let final_start = Instant::now();
    let stop_final = Arc::new(AtomicBool::new(false));
    let mut finals = Vec::new();
    for (&k, raw) in &raw_keys {
        let log = logs_by_key[&k].clone();
        let stop = stop_final.clone();
        let raw = raw.clone();
        finals.push(tokio::spawn(async move {
            let cursor = log.lock().unwrap().cursor.clone().unwrap();
            let url = format!("ws://{front}/hubs/spend?access_token={raw}&cursor={cursor}");
            let deadline = Instant::now() + Duration::from_secs(20);
            // Connected once (retrying refusals), kept open until told to stop.
            loop {
                match session(&url, k, &log, &stop, &AtomicBool::new(false), true).await {
                    Ok(_) => return true,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => return false,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_final.store(true, Ordering::SeqCst);
    let mut final_ok = 0;
    for f in finals {
        final_ok += usize::from(
            tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .expect("a final reconnect did not stop within 30 s")
                .unwrap(),
        );
    }
    let after: usize = logs_by_key
        .values()
        .map(|l| l.lock().unwrap().events.len())
        .sum();

    // ---- The figures.
    let alert_rows = pg.query(alerts_query, &[]).await.unwrap();
    let alerts = alerts_of(&alert_rows);
    let states = pg
        .query(
            "SELECT key_id, threshold, generation, alert_id IS NULL, source_event_id \
             FROM budget_alert_state",
            &[],
        )
        .await
        .unwrap();
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Each key's history stream as it is now: positions only.
    let streams: HashMap<i64, Vec<(u64, u64)>> = read_streams(&mut redis, &prefix)
        .await
        .into_iter()
        .map(|(k, entries)| (k, entries.into_iter().map(|(p, _)| p).collect()))
        .collect();
    let mut expected_events = 0;
    let mut received = 0;
    let mut lost = Vec::new();
    let mut lost_excused = 0;
    // Per kind (SpendUpdate, BudgetAlert): expected, received (distinct), lost to the wipe.
    let mut per_kind: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    // ResumeGaps other than the documented ones, or at the wrong place.
    let mut gap_problems = Vec::new();
    let mut duplicated = Vec::new();
    let mut duplicated_excused = 0;
    let mut foreign = Vec::new();
    let mut out_of_order = Vec::new();
    let mut stream_mismatch = Vec::new();
    let mut inversions = 0;
    let mut alerts_received = 0;
    let mut alert_dup_on_client = Vec::new();
    let mut reconnects = 0;
    let mut refused = 0;
    let mut gaps = 0;
    let mut clients_with_gap = 0;
    let mut anomalies = Vec::new();
    for (k, log) in &logs_by_key {
        let log = log.lock().unwrap();
        reconnects += log.reconnects;
        refused += log.refused;
        gaps += log.gaps.len();
        clients_with_gap += usize::from(!log.gaps.is_empty());
        anomalies.extend(log.anomalies.iter().map(|a| format!("key {k}: {a}")));
        received += log.events.len();
        let key_alerts = alerts.get(k).cloned().unwrap_or_default();
        // eventId → kind of every event the client should hold.
        let mut expected: HashMap<&str, &str> = all_ids[k]
            .iter()
            .map(|id| (id.as_str(), "SpendUpdate"))
            .collect();
        for a in &key_alerts {
            expected.insert(a.0.as_str(), "BudgetAlert");
        }
        expected_events += expected.len();
        let mut copies: HashMap<&str, Vec<&Received>> = HashMap::new();
        for e in &log.events {
            copies.entry(e.event_id.as_str()).or_default().push(e);
        }
        for (id, kind) in &expected {
            let counts = per_kind.entry(kind).or_default();
            counts.0 += 1;
            if copies.contains_key(id) {
                counts.1 += 1;
            } else if excused(*k, &log, id) {
                counts.2 += 1;
                lost_excused += 1;
            } else {
                lost.push(format!("key {k}: {kind} {id}"));
            }
        }
        let wiped_positions: HashSet<(u64, u64)> = wiped[k].iter().map(|(p, _)| *p).collect();
        for (id, c) in &copies {
            if !expected.contains_key(id) {
                foreign.push(format!("key {k}: {id}"));
                continue;
            }
            if c.len() > 1 {
                // Excused only across the wipe (its dedupe set is gone): exactly two copies,
                // the first from the wiped history, the second written again after it.
                if c.len() == 2
                    && wiped_positions.contains(&c[0].position)
                    && !wiped_positions.contains(&c[1].position)
                {
                    duplicated_excused += 1;
                } else {
                    duplicated.push(format!("key {k}: {id} ×{}", c.len()));
                }
            }
        }
        // Where the ResumeGaps are (docs/reliability.md): none for a client connected across
        // the wipe; for a client offline across it, one, on its first connection after Redis
        // came back, right after the last event it received before going offline, with that
        // event's position as the cursor; for the quiet key, one more on the final reconnect
        // (nothing was written to its stream since the wipe).
        let offline_key = k <= &OFFLINE_ACROSS_WIPE || *k == QUIET;
        let mut want_gaps = 0;
        if offline_key {
            want_gaps += 1;
            match (log.gaps.first(), log.offline_at) {
                (Some(g), Some((held, connections))) => {
                    let last = held.checked_sub(1).map(|i| log.events[i].position);
                    if !(g.at > redis_up
                        && g.at < final_start
                        && g.index == held
                        && g.connection == connections + 1
                        && g.after.is_some()
                        && g.after == last)
                    {
                        gap_problems.push(format!(
                            "key {k}: ResumeGap at event {} on connection {} after {:?} \
                             (after the wipe: {}); went offline holding {held} events (last at \
                             {last:?}) after {connections} connections",
                            g.index,
                            g.connection,
                            g.after,
                            g.at > redis_up && g.at < final_start
                        ));
                    }
                }
                (g, offline) => gap_problems.push(format!(
                    "key {k}: offline across the wipe: ResumeGap {}, taken offline {}",
                    g.is_some(),
                    offline.is_some()
                )),
            }
        }
        if *k == QUIET {
            want_gaps += 1;
            if let Some(g) = log.gaps.get(1)
                && !(g.at > final_start && g.index == log.events.len())
            {
                gap_problems.push(format!(
                    "key {k}: second ResumeGap at event {} of {}, not on the final reconnect",
                    g.index,
                    log.events.len()
                ));
            }
        }
        if log.gaps.len() != want_gaps {
            gap_problems.push(format!(
                "key {k}: {} ResumeGaps, want {want_gaps} (at events {:?})",
                log.gaps.len(),
                log.gaps.iter().map(|g| g.index).collect::<Vec<_>>()
            ));
        }
        // Stream order: positions strictly increase along what the client received.
        for w in log.events.windows(2) {
            if w[1].position <= w[0].position {
                out_of_order.push(format!(
                    "key {k}: {} at {:?} after {} at {:?}",
                    w[1].event_id, w[1].position, w[0].event_id, w[0].position
                ));
            }
        }
        // What the history stream holds now (everything since the wipe) is exactly the tail of
        // what the client received, position by position.
        let stream_positions = &streams[k];
        if let Some(first) = stream_positions.first() {
            let tail: Vec<(u64, u64)> = log
                .events
                .iter()
                .map(|e| e.position)
                .filter(|p| p >= first)
                .collect();
            if tail != *stream_positions {
                stream_mismatch.push(format!(
                    "key {k}: stream holds {} entries from {first:?}, client received {} of them",
                    stream_positions.len(),
                    tail.len()
                ));
            }
        } else if *k != QUIET {
            stream_mismatch.push(format!("key {k}: history stream is empty"));
        }
        // Publish order of one key's totals (informational: two consumers may interleave).
        let mut max = 0.0f64;
        for e in log.events.iter().filter(|e| e.target == "SpendUpdate") {
            let t: f64 = e
                .total
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            if t < max {
                inversions += 1;
            }
            max = max.max(t);
        }
        // Alerts on the client: one per (key, threshold).
        let mut per_threshold: HashMap<String, usize> = HashMap::new();
        let mut distinct = HashSet::new();
        for e in log.events.iter().filter(|e| e.target == "BudgetAlert") {
            alerts_received += usize::from(distinct.insert(e.event_id.as_str()));
            let threshold = e.event_id.rsplit(':').nth(1).unwrap_or("?").to_owned();
            *per_threshold.entry(threshold).or_default() += 1;
        }
        for (t, n) in per_threshold {
            if n > 1 {
                alert_dup_on_client.push(format!("key {k}: threshold {t} ×{n}"));
            }
        }
    }
    // PostgreSQL: one alert per (key, threshold), generation 1, published; every threshold of
    // every key either fired or marked (passed over by a jump), once.
    let mut pg_problems = Vec::new();
    let mut fired: HashMap<(i64, i32), usize> = HashMap::new();
    for (k, rows) in &alerts {
        for (id, threshold, generation, _, published) in rows {
            *fired.entry((*k, *threshold)).or_default() += 1;
            if *generation != 1 {
                pg_problems.push(format!("{id}: generation {generation}"));
            }
            if !published {
                pg_problems.push(format!("{id}: never published"));
            }
        }
    }
    pg_problems.extend(
        fired
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((k, t), n)| format!("key {k} threshold {t} fired {n} times")),
    );
    let mut marked = 0;
    let mut state_count: HashMap<(i64, i32), usize> = HashMap::new();
    for r in &states {
        let (k, t, generation, is_mark, source): (i64, i32, i32, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        *state_count.entry((k, t)).or_default() += 1;
        marked += usize::from(is_mark);
        // Passed over by a jump: the same message crossed a higher threshold of the key, and
        // only that one fired (docs/events.md, example 15).
        if is_mark
            && !alerts
                .get(&k)
                .into_iter()
                .flatten()
                .any(|a| a.1 > t && a.3 == source)
        {
            pg_problems.push(format!(
                "key {k} threshold {t}: marked by {source}, which fired no higher threshold"
            ));
        }
        if generation != 1 {
            pg_problems.push(format!(
                "key {k} threshold {t}: state generation {generation}"
            ));
        }
    }
    for k in 1..=KEYS {
        for t in THRESHOLDS {
            if state_count.get(&(k, t as i32)) != Some(&1) {
                pg_problems.push(format!("key {k} threshold {t}: not fired or marked once"));
            }
        }
    }
    let fired_total: usize = fired.values().sum();
    let pairs = KEYS as usize * THRESHOLDS.len();
    if fired_total + marked != pairs || states.len() != pairs {
        pg_problems.push(format!(
            "{fired_total} alerts fired + {marked} thresholds marked, {} state rows: want {pairs}",
            states.len()
        ));
    }

    let sent = total + QUIET as usize + QUIET_MESSAGES as usize - 1;
    let confirmed = stats.confirmed + quiet_stats.confirmed;
    let attempts = stats.attempts + quiet_stats.attempts;
    let unconfirmed = stats.unconfirmed + quiet_stats.unconfirmed;
    let connection_failures = stats.connection_failures + quiet_stats.connection_failures;
    println!("[chaos] ---------------- figures ----------------");
    println!(
        "[chaos] messages: planned {sent}, confirmed by RabbitMQ {confirmed}; basic.publish calls {attempts} ({unconfirmed} unconfirmed, published again with the same messageId); failed connection attempts {connection_failures}"
    );
    let kind = |name: &str| per_kind.get(name).copied().unwrap_or_default();
    let (spend, alert) = (kind("SpendUpdate"), kind("BudgetAlert"));
    println!(
        "[chaos] per kind: SpendUpdate expected {} received {} lost to the wipe {}; BudgetAlert expected {} (rows of budget_alerts) received {} lost to the wipe {}",
        spend.0, spend.1, spend.2, alert.0, alert.1, alert.2
    );
    println!(
        "[chaos] events: expected {expected_events}, received {received}, lost {} (+{lost_excused} excused: in the wiped stream after a ResumeGap's cursor), duplicated {} (+{duplicated_excused} excused), foreign {}, out of stream order {}, stream/client mismatches {}",
        lost.len(),
        duplicated.len(),
        foreign.len(),
        out_of_order.len(),
        stream_mismatch.len()
    );
    println!(
        "[chaos] alerts: (key, threshold) pairs {}, fired in PostgreSQL {fired_total}, marked (passed over by a jump) {marked}, received by clients {alerts_received}, duplicated on clients {}",
        KEYS as usize * THRESHOLDS.len(),
        alert_dup_on_client.len()
    );
    println!(
        "[chaos] clients: {QUIET}, reconnects {reconnects}, refused connect attempts {refused}, ResumeGaps {gaps} (clients {clients_with_gap}), final cursor reconnects {final_ok}/{QUIET} replayed {} events",
        after - before
    );
    println!(
        "[chaos] per-key total inversions (two consumers, informational): {inversions}; anomalies {}",
        anomalies.len()
    );
    println!("[chaos] whole test {:.1}s", started.elapsed().as_secs_f64());
    let show = |name: &str, v: &[String]| {
        if !v.is_empty() {
            println!("[chaos] {name} ({}): {:?}", v.len(), &v[..v.len().min(20)]);
        }
    };
    show("lost", &lost);
    show("duplicated", &duplicated);
    show("foreign", &foreign);
    show("out of order", &out_of_order);
    show("stream mismatch", &stream_mismatch);
    show("alert duplicates", &alert_dup_on_client);
    show("postgres", &pg_problems);
    show("anomalies", &anomalies);
    show("ResumeGap", &gap_problems);

    assert!(lost.is_empty(), "events lost");
    assert!(duplicated.is_empty(), "events duplicated");
    assert!(foreign.is_empty(), "events of another key");
    assert!(out_of_order.is_empty(), "events out of stream order");
    assert!(
        stream_mismatch.is_empty(),
        "client and history stream disagree"
    );
    assert!(
        alert_dup_on_client.is_empty(),
        "an alert reached a client twice"
    );
    assert!(pg_problems.is_empty(), "alerts in PostgreSQL");
    assert!(anomalies.is_empty(), "protocol anomalies");
    assert!(
        gap_problems.is_empty(),
        "ResumeGaps missing, extra or at the wrong place"
    );
    assert_eq!(confirmed, sent, "messages confirmed by RabbitMQ");
    assert_eq!(after, before, "the final cursor reconnect replayed events");
    assert_eq!(
        final_ok, QUIET as usize,
        "every client reconnected at the end"
    );
    // Alerts, counted as alerts only: each row of budget_alerts reached its client once or
    // was lost to the wipe under the rule above, and nothing else arrived as an alert.
    assert_eq!(alert.0, fired_total, "BudgetAlerts expected");
    assert_eq!(
        alert.1 + alert.2,
        fired_total,
        "every fired alert reached its client or was lost to the wipe"
    );
    assert_eq!(
        alerts_received, alert.1,
        "distinct alerts received by clients = fired alerts received"
    );
    drop(consumer1);
    drop(consumer2);
    drop(gateways);
    if std::env::var_os("HERALD_CHAOS_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}
