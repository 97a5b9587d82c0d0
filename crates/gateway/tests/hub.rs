//! End-to-end: a real axum server on 127.0.0.1:0 with MemoryStore + MemoryBackplane, and a
//! SignalR JSON client (`herald-signalr-client`) that sends raw records where a test needs to.
#![allow(clippy::unwrap_used)]
use herald_backplane::{Backplane, MemoryBackplane};
use herald_domain::{Audience, EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use herald_gateway::cursor::Cursor;
use herald_gateway::token::{self, ConnectionToken};
use herald_gateway::{Gateway, GatewayConfig};
use herald_signalr_client::ConnectError;
use herald_store::{MemoryStore, Store};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"test-secret-shared-by-nodes";
const KEY_A: &str = "condt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const KEY_B: &str = "condt_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const WAIT: Duration = Duration::from_secs(5);

fn config() -> GatewayConfig {
    GatewayConfig {
        master_key: Some("master-secret".into()),
        token_secret: SECRET.to_vec(),
        drain_window: Duration::ZERO,
        ..GatewayConfig::default()
    }
}

struct Env {
    store: Arc<MemoryStore>,
    backplane: Arc<MemoryBackplane>,
}

impl Env {
    async fn new() -> Env {
        Env::with_history(1000).await
    }

    async fn with_history(max_len: usize) -> Env {
        let store = Arc::new(MemoryStore::new());
        for (id, raw) in [(1, KEY_A), (2, KEY_B)] {
            let key = VirtualKey::new(KeyId::new(id).unwrap(), KeyHash::of_raw(raw), "k");
            store.put_key(&key).await.unwrap();
        }
        Env {
            store,
            backplane: Arc::new(MemoryBackplane::new(max_len)),
        }
    }

    async fn node(&self, config: GatewayConfig) -> (SocketAddr, Gateway) {
        let gw = Gateway::new(config, self.store.clone(), self.backplane.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = gw.router();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, gw)
    }

    /// Publishes a SpendUpdate for key `id`; returns the payload as published.
    async fn publish(&self, id: i64, event_id: &str) -> String {
        let payload = format!(
            r#"{{"eventId":"{event_id}","virtualKeyId":{id},"newSpend":0.000123,"totalSpend":12.50}}"#
        );
        self.publish_named(id, event_id, "SpendUpdate", &payload)
            .await;
        payload
    }

    async fn publish_named(&self, id: i64, event_id: &str, name: &str, payload: &str) {
        let key = KeyId::new(id).unwrap();
        let mut ev = OutboundEvent {
            event_id: EventId::parse(event_id).unwrap(),
            name: herald_domain::Outbound::parse(name).expect("a known event name"),
            key_id: Some(key),
            timestamp: chrono::Utc::now(),
            traceparent: None,
            payload: serde_json::value::RawValue::from_string(payload.to_owned()).unwrap(),
            task: None,
            binary: Default::default(),
        };
        ev.fill_in_task();
        self.backplane
            .publish(&[Audience::Key(key), Audience::Admin], &ev)
            .await
            .unwrap();
    }
}

/// Minimal HTTP/1.1 request; returns (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn negotiate(addr: SocketAddr, hub: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = http(
        addr,
        "POST",
        &format!("/hubs/{hub}/negotiate?negotiateVersion=1"),
        headers,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The shared test client (`herald-signalr-client`), with this file's conventions: every wait
/// is `WAIT`, and a wait that runs out fails the test.
struct Client(herald_signalr_client::Client);

/// Connects to `ws://addr{path}`; `Err(status)` when refused before the upgrade.
async fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, u16> {
    match herald_signalr_client::Client::open(&format!("ws://{addr}{path}"), headers).await {
        Ok(c) => Ok(Client(c)),
        Err(ConnectError::Refused(status)) => Err(status),
        Err(ConnectError::Other(e)) => panic!("connect failed: {e}"),
    }
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let mut c = try_connect(addr, path, &[]).await.unwrap();
    c.handshake().await;
    c
}

impl Client {
    async fn send(&mut self, text: &str) {
        self.0.send(text).await.unwrap();
    }

    async fn handshake(&mut self) {
        self.0.handshake(WAIT).await.unwrap();
    }

    /// The next record, `None` once the connection is closed.
    async fn next(&mut self) -> Option<String> {
        self.0
            .next_record(WAIT)
            .await
            .expect("no record within 5 s")
    }

    async fn next_json(&mut self) -> Value {
        let r = self.next().await.expect("connection closed");
        serde_json::from_str(&r).unwrap()
    }

    /// The next record that is not a Ping.
    async fn next_non_ping(&mut self) -> Option<Value> {
        loop {
            let r = self.next().await?;
            let v: Value = serde_json::from_str(&r).unwrap();
            if v["type"] != 6 {
                return Some(v);
            }
        }
    }

    /// Asserts the server closes: an optional Close record, then the socket ends.
    async fn expect_closed(&mut self) {
        while self.next().await.is_some() {}
    }

    /// Records per text frame received so far.
    fn frames(&self) -> &[usize] {
        self.0.frames()
    }
}

fn event_ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|v| v["arguments"][0]["eventId"].as_str().unwrap().to_owned())
        .collect()
}

async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c
            .next_non_ping()
            .await
            .expect("closed while waiting for events");
        assert_eq!(v["type"], 1, "expected an invocation: {v}");
        out.push(v);
    }
    out
}

#[tokio::test]
async fn negotiate_then_connect_with_token_delivers_exact_payload_and_cursor() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let auth = format!("Bearer {KEY_A}");
    let (status, body) = negotiate(addr, "spend", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["negotiateVersion"], 1);
    assert_eq!(body["availableTransports"][0]["transport"], "WebSockets");
    assert_eq!(
        body["availableTransports"][0]["transferFormats"],
        serde_json::json!(["Text", "Binary"])
    );
    assert!(body["connectionId"].is_string());
    let token = body["connectionToken"].as_str().unwrap();
    let mut c = connect(
        addr,
        &format!("/hubs/spend?id={token}&access_token={KEY_A}"),
    )
    .await;

    let payload = env.publish(1, "e-1").await;
    let rec = c.next().await.unwrap();
    let v: Value = serde_json::from_str(&rec).unwrap();
    let cursor = v["arguments"][0]["cursor"].as_str().unwrap();
    let expected = format!(
        "{{\"type\":1,\"target\":\"SpendUpdate\",\"arguments\":[{},\"cursor\":\"{cursor}\"}}]}}",
        payload.strip_suffix('}').unwrap()
    );
    assert_eq!(rec, expected);
    assert!(rec.contains("\"newSpend\":0.000123,\"totalSpend\":12.50,"));
    // The cursor names the position of the event in the key's stream.
    let held = env
        .backplane
        .history(Audience::Key(KeyId::new(1).unwrap()), None, 10)
        .await
        .unwrap();
    let decoded = Cursor::decode(cursor).unwrap();
    assert_eq!(
        decoded.get(Audience::Key(KeyId::new(1).unwrap())),
        Some(held.events[0].position)
    );
}

#[tokio::test]
async fn every_credential_placement_works_with_and_without_negotiate() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let bearer = format!("Bearer {KEY_A}");
    let placements: [(String, Vec<(&str, &str)>); 4] = [
        (format!("access_token={KEY_A}"), vec![]),
        (format!("api_key={KEY_A}"), vec![]),
        (String::new(), vec![("Authorization", bearer.as_str())]),
        (String::new(), vec![("X-API-Key", KEY_A)]),
    ];
    for (query, headers) in &placements {
        let (status, body) = http(
            addr,
            "POST",
            &format!("/hubs/spend/negotiate?negotiateVersion=1&{query}"),
            headers,
        )
        .await;
        assert_eq!(status, 200, "negotiate with {query:?} {headers:?}");
        let token: Value = serde_json::from_str(&body).unwrap();
        let token = token["connectionToken"].as_str().unwrap().to_owned();
        for path in [
            format!("/hubs/spend?{query}"),
            format!("/hubs/spend?id={token}&{query}"),
        ] {
            let mut c = try_connect(addr, &path, headers)
                .await
                .unwrap_or_else(|s| panic!("{path} {headers:?}: {s}"));
            c.handshake().await;
        }
    }
    // The first placement in the documented order wins: a bad access_token is not rescued by
    // a good header.
    assert_eq!(
        try_connect(
            addr,
            "/hubs/spend?access_token=condt_nope",
            &[("X-API-Key", KEY_A)]
        )
        .await
        .err(),
        Some(401)
    );
}

#[tokio::test]
async fn missing_unknown_disabled_and_expired_keys_get_401_before_upgrade() {
    let env = Env::new().await;
    let mut disabled = VirtualKey::new(
        KeyId::new(3).unwrap(),
        KeyHash::of_raw("condt_disabled"),
        "d",
    );
    disabled.enabled = false;
    env.store.put_key(&disabled).await.unwrap();
    let mut expired = VirtualKey::new(
        KeyId::new(4).unwrap(),
        KeyHash::of_raw("condt_expired"),
        "x",
    );
    expired.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    env.store.put_key(&expired).await.unwrap();
    let (addr, _gw) = env.node(config()).await;
    for query in [
        "",
        "access_token=condt_unknown",
        "access_token=condt_disabled",
        "access_token=condt_expired",
        "access_token=master-secret",
    ] {
        let (status, _) = http(
            addr,
            "POST",
            &format!("/hubs/spend/negotiate?negotiateVersion=1&{query}"),
            &[],
        )
        .await;
        assert_eq!(status, 401, "negotiate {query:?}");
        assert_eq!(
            try_connect(addr, &format!("/hubs/spend?{query}"), &[])
                .await
                .err(),
            Some(401),
            "upgrade {query:?}"
        );
    }
    // Unknown hubs are 404; routes match case-insensitively, aliases included.
    assert_eq!(
        negotiate(addr, "nope", &[("X-API-Key", KEY_A)]).await.0,
        404
    );
    assert_eq!(
        negotiate(addr, "SPEND", &[("X-API-Key", KEY_A)]).await.0,
        200
    );
    connect(
        addr,
        &format!("/hubs/Spend-Notifications?access_token={KEY_A}"),
    )
    .await;
}

#[tokio::test]
async fn forged_expired_or_foreign_connection_tokens_are_refused() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let (_, body) = negotiate(addr, "spend", &[("X-API-Key", KEY_A)]).await;
    let good = body["connectionToken"].as_str().unwrap().to_owned();
    let (payload, tag) = good.split_once('.').unwrap();
    let forged = format!("{payload}.{}", "A".repeat(tag.len()));
    let now = chrono::Utc::now().timestamp();
    let mk = |principal: String, expires: i64, hub: &str| {
        token::sign(
            SECRET,
            &ConnectionToken {
                hub: hub.into(),
                principal,
                expires,
                connection_id: "c".into(),
            },
        )
    };
    let expired = mk(KeyHash::of_raw(KEY_A).to_string(), now - 1, "spend");
    let other_key = mk(KeyHash::of_raw(KEY_B).to_string(), now + 60, "spend");
    let other_hub = mk(KeyHash::of_raw(KEY_A).to_string(), now + 60, "admin");
    let other_secret = token::sign(
        b"another",
        &ConnectionToken {
            hub: "spend".into(),
            principal: KeyHash::of_raw(KEY_A).to_string(),
            expires: now + 60,
            connection_id: "c".into(),
        },
    );
    for bad in [
        forged,
        expired,
        other_key,
        other_hub,
        other_secret,
        "garbage".into(),
    ] {
        assert_eq!(
            try_connect(
                addr,
                &format!("/hubs/spend?id={bad}&access_token={KEY_A}"),
                &[]
            )
            .await
            .err(),
            Some(401),
            "{bad}"
        );
    }
    connect(addr, &format!("/hubs/spend?id={good}&access_token={KEY_A}")).await;
}

#[tokio::test]
async fn a_token_from_one_node_is_accepted_by_another_with_the_same_secret() {
    let env = Env::new().await;
    let (a, _ga) = env.node(config()).await;
    let (b, _gb) = env.node(config()).await;
    let (c, _gc) = env
        .node(GatewayConfig {
            token_secret: b"different".to_vec(),
            ..config()
        })
        .await;
    let (_, body) = negotiate(a, "spend", &[("X-API-Key", KEY_A)]).await;
    let token = body["connectionToken"].as_str().unwrap();
    let mut client = connect(b, &format!("/hubs/spend?id={token}&access_token={KEY_A}")).await;
    assert_eq!(
        try_connect(
            c,
            &format!("/hubs/spend?id={token}&access_token={KEY_A}"),
            &[]
        )
        .await
        .err(),
        Some(401)
    );
    env.publish(1, "x-1").await;
    assert_eq!(event_ids(&events(&mut client, 1).await), ["x-1"]);
}

#[tokio::test]
async fn events_of_one_key_never_reach_another_key() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let mut a = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    let mut b = connect(addr, &format!("/hubs/spend?access_token={KEY_B}")).await;
    for i in 0..5 {
        env.publish(1, &format!("a-{i}")).await;
        env.publish(2, &format!("b-{i}")).await;
    }
    // Events the spend hub does not forward (same key) are not sent either.
    env.publish_named(2, "t-1", "TaskProgress", r#"{"eventId":"t-1"}"#)
        .await;
    env.publish(2, "b-last").await;
    assert_eq!(
        event_ids(&events(&mut a, 5).await),
        ["a-0", "a-1", "a-2", "a-3", "a-4"]
    );
    assert_eq!(
        event_ids(&events(&mut b, 6).await),
        ["b-0", "b-1", "b-2", "b-3", "b-4", "b-last"]
    );
}

#[tokio::test]
async fn queued_events_go_out_several_records_per_frame() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    // Subscribed at upgrade: events published before the handshake wait in the mailbox and
    // are written together once it completes.
    let mut c = try_connect(addr, &format!("/hubs/spend?access_token={KEY_A}"), &[])
        .await
        .unwrap();
    for i in 0..50 {
        env.publish(1, &format!("e-{i:02}")).await;
    }
    c.handshake().await;
    let got = events(&mut c, 50).await;
    let want: Vec<String> = (0..50).map(|i| format!("e-{i:02}")).collect();
    assert_eq!(event_ids(&got), want);
    assert!(
        c.frames().iter().any(|&n| n > 1),
        "records per frame: {:?}",
        c.frames()
    );
    // Each record's cursor advances.
    let cursors: Vec<&str> = got
        .iter()
        .map(|v| v["arguments"][0]["cursor"].as_str().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] != w[1]));
}

#[tokio::test]
async fn handshake_timeout_and_bad_protocol_close_with_an_error() {
    let env = Env::new().await;
    let (addr, _gw) = env
        .node(GatewayConfig {
            handshake_timeout: Duration::from_millis(200),
            ..config()
        })
        .await;
    let path = format!("/hubs/spend?access_token={KEY_A}");

    let mut c = try_connect(addr, &path, &[]).await.unwrap();
    let v = c.next_json().await;
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Handshake was not received"),
        "{v}"
    );
    c.expect_closed().await;

    let mut c = try_connect(addr, &path, &[]).await.unwrap();
    c.send("{\"protocol\":\"xml\",\"version\":1}\u{1e}").await;
    let v = c.next_json().await;
    assert!(v["error"].as_str().unwrap().contains("'xml'"), "{v}");
    c.expect_closed().await;

    let mut c = try_connect(addr, &path, &[]).await.unwrap();
    c.send("{\"protocol\":\"json\",\"version\":7}\u{1e}").await;
    assert!(c.next_json().await["error"].is_string());
    c.expect_closed().await;
}

#[tokio::test]
async fn oversize_messages_get_a_close_with_an_error() {
    let env = Env::new().await;
    let (addr, _gw) = env
        .node(GatewayConfig {
            max_message_bytes: 1024,
            ..config()
        })
        .await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    // A little over the limit, and far beyond the transport's own limit.
    for size in [2_000, 500_000] {
        let mut c = connect(addr, &path).await;
        let big = format!(
            "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Resume\",\"arguments\":[\"{}\"]}}\u{1e}",
            "x".repeat(size)
        );
        let _ = c.0.send(&big).await;
        let v = c
            .next_non_ping()
            .await
            .unwrap_or_else(|| panic!("no Close for {size}"));
        assert_eq!(v["type"], 7, "{v}");
        assert!(v["error"].is_string(), "{v}");
        if size == 2_000 {
            assert!(v["error"].as_str().unwrap().contains("maximum size"), "{v}");
        }
        c.expect_closed().await;
    }
    // The server is fine afterwards.
    connect(addr, &path).await;
}

#[tokio::test]
async fn unknown_methods_get_a_completion_error_and_the_connection_stays_usable() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let mut c = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    c.send("{\"type\":1,\"invocationId\":\"1\",\"target\":\"Nope\",\"arguments\":[]}\u{1e}")
        .await;
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":3,"invocationId":"1","error":"Unknown hub method 'Nope'"})
    );
    // No invocation id: no completion. Then a stream invocation, then a case-insensitive
    // Resume with an empty cursor; answers come in order.
    c.send("{\"type\":1,\"target\":\"Nope\",\"arguments\":[]}\u{1e}{\"type\":4,\"invocationId\":\"2\",\"target\":\"Resume\",\"arguments\":[]}\u{1e}").await;
    c.send("{\"type\":1,\"invocationId\":\"3\",\"target\":\"resume\",\"arguments\":[\"\"]}\u{1e}")
        .await;
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(v["invocationId"], "2");
    assert!(v["error"].is_string());
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":3,"invocationId":"3","result":{"replayed":0}})
    );
    c.send("{\"type\":1,\"invocationId\":\"4\",\"target\":\"Resume\",\"arguments\":[\"!!\"]}\u{1e}{\"type\":6}\u{1e}").await;
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(v["error"], "invalid cursor");
    env.publish(1, "still-1").await;
    assert_eq!(event_ids(&events(&mut c, 1).await), ["still-1"]);
}

#[tokio::test]
async fn invalid_json_or_unknown_type_closes_with_an_error() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    for bad in ["{not json\u{1e}", "{\"type\":42}\u{1e}"] {
        let mut c = connect(addr, &path).await;
        c.send(bad).await;
        let v = c.next_non_ping().await.unwrap();
        assert_eq!(v["type"], 7);
        assert!(
            v["error"].as_str().unwrap().starts_with("Invalid message"),
            "{v}"
        );
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn pings_are_sent_and_a_silent_client_is_closed() {
    let env = Env::new().await;
    let cfg = GatewayConfig {
        keepalive_interval: Duration::from_millis(100),
        client_timeout: Duration::from_millis(600),
        ..config()
    };
    let (addr, _gw) = env.node(cfg).await;
    let mut c = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    assert_eq!(c.next().await.as_deref(), Some("{\"type\":6}"));
    // Client pings keep it alive past the timeout...
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        c.send("{\"type\":6}\u{1e}").await;
        assert_eq!(c.next().await.as_deref(), Some("{\"type\":6}"));
    }
    // ...and silence ends it.
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":7,"error":"Server timeout elapsed without receiving a message from the client.","allowReconnect":true})
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn slow_consumers_are_closed_with_allow_reconnect() {
    let env = Env::new().await;
    let (addr, _gw) = env
        .node(GatewayConfig {
            outbound_queue_bytes: 1000,
            ..config()
        })
        .await;
    let mut c = try_connect(addr, &format!("/hubs/spend?access_token={KEY_A}"), &[])
        .await
        .unwrap();
    for i in 0..20 {
        env.publish(1, &format!("e-{i}")).await;
    }
    c.handshake().await;
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":7,"error":"slow consumer: outbound queue full","allowReconnect":true})
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_back_the_others_of_its_audience() {
    let env = Env::new().await;
    let (addr, _gw) = env
        .node(GatewayConfig {
            outbound_queue_bytes: 64 * 1024,
            ..config()
        })
        .await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    // Never read again after the handshake: its socket buffers fill, then its queue.
    let mut stalled = connect(addr, &path).await;
    let mut fast = connect(addr, &path).await;
    let filler = "x".repeat(16 * 1024);
    // Lockstep: each event reaches the fast client before the next is published. If fan-out
    // waited on the stalled client, the fast one would stop receiving (and this would time out)
    // long before 2,000 events of 16 KiB (32 MiB) went through.
    for i in 0..2000 {
        let id = format!("big-{i}");
        let payload = format!(r#"{{"eventId":"{id}","virtualKeyId":1,"filler":"{filler}"}}"#);
        env.publish_named(1, &id, "SpendUpdate", &payload).await;
        let got = events(&mut fast, 1).await;
        assert_eq!(event_ids(&got), [id]);
    }
    // The stalled one was closed as a slow consumer, allowed to reconnect (and resume).
    let mut last = None;
    while let Some(r) = stalled.next().await {
        last = Some(r);
    }
    let close: Value = serde_json::from_str(&last.expect("a Close record")).unwrap();
    assert_eq!(
        close,
        serde_json::json!({"type":7,"error":"slow consumer: outbound queue full","allowReconnect":true})
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_allow_reconnect_and_refuses_new_ones() {
    let env = Env::new().await;
    let (addr, gw) = env.node(config()).await;
    let mut c = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    assert_eq!(gw.connections(), 1);
    gw.shutdown();
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(v["type"], 7);
    assert_eq!(v["allowReconnect"], true);
    c.expect_closed().await;
    assert_eq!(
        negotiate(addr, "spend", &[("X-API-Key", KEY_A)]).await.0,
        503
    );
}

#[tokio::test]
async fn reconnecting_with_a_cursor_replays_the_missed_events_once_then_goes_live() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    let mut c = connect(addr, &path).await;
    env.publish(1, "e-0").await;
    let first = events(&mut c, 1).await;
    let cursor = first[0]["arguments"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(c);
    for i in 1..=300 {
        env.publish(1, &format!("e-{i}")).await;
    }
    // Subscribed at upgrade, before the handshake: these are both in history and queued live,
    // so the replay must skip them when they come through the mailbox.
    let mut c = try_connect(addr, &format!("{path}&cursor={cursor}"), &[])
        .await
        .unwrap();
    for i in 301..=350 {
        env.publish(1, &format!("e-{i}")).await;
    }
    // And more keep coming while the replay runs (history pages of 200).
    let live = {
        let bp = env.backplane.clone();
        tokio::spawn(async move {
            for i in 351..=400 {
                let key = KeyId::new(1).unwrap();
                let ev = OutboundEvent {
                    event_id: EventId::parse(&format!("e-{i}")).unwrap(),
                    name: herald_domain::Outbound::SpendUpdate,
                    key_id: Some(key),
                    timestamp: chrono::Utc::now(),
                    traceparent: None,
                    payload: serde_json::value::RawValue::from_string(format!(
                        "{{\"eventId\":\"e-{i}\"}}"
                    ))
                    .unwrap(),
                    task: None,
                    binary: Default::default(),
                };
                bp.publish(&[Audience::Key(key)], &ev).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    c.handshake().await;
    let got = events(&mut c, 400).await;
    live.await.unwrap();
    let want: Vec<String> = (1..=400).map(|i| format!("e-{i}")).collect();
    assert_eq!(event_ids(&got), want);
    // Nothing more (no duplicates): a Resume round trip comes back with nothing before it.
    c.send("{\"type\":1,\"invocationId\":\"9\",\"target\":\"Resume\",\"arguments\":[\"\"]}\u{1e}")
        .await;
    assert_eq!(c.next_non_ping().await.unwrap()["type"], 3);
}

#[tokio::test]
async fn a_cursor_older_than_history_gets_resume_gap_first() {
    let env = Env::with_history(3).await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    let mut c = connect(addr, &path).await;
    env.publish(1, "old").await;
    let cursor = events(&mut c, 1).await[0]["arguments"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(c);
    for i in 0..6 {
        env.publish(1, &format!("n-{i}")).await;
    }
    let mut c = connect(addr, &format!("{path}&cursor={cursor}")).await;
    let gap = c.next_non_ping().await.unwrap();
    assert_eq!(gap["target"], "ResumeGap");
    assert_eq!(gap["arguments"][0]["audience"], "vkey:1");
    assert_eq!(gap["arguments"][0]["cursor"], cursor.as_str());
    assert_eq!(event_ids(&events(&mut c, 3).await), ["n-3", "n-4", "n-5"]);
}

#[tokio::test]
async fn resume_on_an_open_connection_replays_only_what_it_has_not_delivered() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    let mut a = connect(addr, &path).await;
    env.publish(1, "e-1").await;
    env.publish(1, "e-2").await;
    let got = events(&mut a, 2).await;
    let c1 = got[0]["arguments"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // `a` already delivered e-2: nothing to replay.
    a.send(&format!(
        "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Resume\",\"arguments\":[\"{c1}\"]}}\u{1e}"
    ))
    .await;
    assert_eq!(
        a.next_non_ping().await.unwrap(),
        serde_json::json!({"type":3,"invocationId":"1","result":{"replayed":0}})
    );
    // A fresh connection resuming from e-1 gets e-2, then the completion, then live events once.
    let mut b = connect(addr, &path).await;
    b.send(&format!(
        "{{\"type\":1,\"invocationId\":\"7\",\"target\":\"Resume\",\"arguments\":[\"{c1}\"]}}\u{1e}"
    ))
    .await;
    assert_eq!(event_ids(&events(&mut b, 1).await), ["e-2"]);
    assert_eq!(
        b.next_non_ping().await.unwrap(),
        serde_json::json!({"type":3,"invocationId":"7","result":{"replayed":1}})
    );
    env.publish(1, "e-3").await;
    assert_eq!(event_ids(&events(&mut b, 1).await), ["e-3"]);
    assert_eq!(event_ids(&events(&mut a, 1).await), ["e-3"]);
}

#[tokio::test]
async fn a_resume_after_live_events_arrived_still_replays_what_was_missed_before_them() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    let mut a = connect(addr, &path).await;
    env.publish(1, "e-1").await;
    let c1 = events(&mut a, 1).await[0]["arguments"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(a);
    env.publish(1, "e-2").await;
    env.publish(1, "e-3").await;
    // The stock client's automatic reconnect: a fresh connection, which receives live events
    // before the application gets to call Resume from onreconnected.
    let mut b = connect(addr, &path).await;
    env.publish(1, "e-4").await;
    assert_eq!(event_ids(&events(&mut b, 1).await), ["e-4"]);
    let resume = |id: &str| {
        format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"Resume\",\"arguments\":[\"{c1}\"]}}\u{1e}"
        )
    };
    b.send(&resume("1")).await;
    // Live events stay ahead of the replay (docs/protocol.md, "Cursors and resume"); each event exactly once.
    assert_eq!(event_ids(&events(&mut b, 2).await), ["e-2", "e-3"]);
    assert_eq!(
        b.next_non_ping().await.unwrap(),
        serde_json::json!({"type":3,"invocationId":"1","result":{"replayed":2}})
    );
    b.send(&resume("2")).await;
    assert_eq!(
        b.next_non_ping().await.unwrap(),
        serde_json::json!({"type":3,"invocationId":"2","result":{"replayed":0}})
    );
    env.publish(1, "e-5").await;
    assert_eq!(event_ids(&events(&mut b, 1).await), ["e-5"]);
}

#[tokio::test]
async fn a_cursor_names_every_audience_even_one_nothing_came_from_yet() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/events?access_token={KEY_A}");
    let mut c = connect(addr, &path).await;
    env.publish(1, "k-1").await;
    let c1 = events(&mut c, 1).await[0]["arguments"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let decoded = Cursor::decode(&c1).unwrap();
    assert!(decoded.get(Audience::Global).is_some(), "{decoded:?}");
    drop(c);
    // While away: the first global event this client would ever see, and one of its key.
    let global = OutboundEvent {
        event_id: EventId::parse("g-1").unwrap(),
        name: herald_domain::Outbound::ProviderHealthChanged,
        key_id: None,
        timestamp: chrono::Utc::now(),
        traceparent: None,
        payload: serde_json::value::RawValue::from_string(r#"{"eventId":"g-1"}"#.into()).unwrap(),
        task: None,
        binary: Default::default(),
    };
    env.backplane
        .publish(&[Audience::Global, Audience::Admin], &global)
        .await
        .unwrap();
    env.publish(1, "k-2").await;
    let mut c = connect(addr, &format!("{path}&cursor={c1}")).await;
    let mut got = event_ids(&events(&mut c, 2).await);
    got.sort();
    assert_eq!(got, ["g-1", "k-2"]);
}

#[tokio::test]
async fn a_bad_cursor_at_connect_is_a_400() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    assert_eq!(
        try_connect(
            addr,
            &format!("/hubs/spend?access_token={KEY_A}&cursor=%21%21"),
            &[]
        )
        .await
        .err(),
        Some(400)
    );
    let (status, _) = http(
        addr,
        "POST",
        &format!("/hubs/spend/negotiate?negotiateVersion=1&access_token={KEY_A}&cursor=@@"),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    // A cursor naming another key's audience is ignored, never replayed.
    env.publish(2, "b-secret").await;
    let mut other = Cursor::default();
    other.set(
        Audience::Key(KeyId::new(2).unwrap()),
        herald_backplane::Position::ZERO,
    );
    let mut c = connect(
        addr,
        &format!("/hubs/spend?access_token={KEY_A}&cursor={}", other.encode()),
    )
    .await;
    env.publish(1, "a-1").await;
    assert_eq!(event_ids(&events(&mut c, 1).await), ["a-1"]);
}

#[tokio::test]
async fn disabling_deleting_or_expiring_the_key_closes_its_connections() {
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let mut a = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    let mut b = connect(addr, &format!("/hubs/spend?access_token={KEY_B}")).await;

    // An update that leaves the key usable changes nothing.
    env.publish_named(1, "u-0", "VirtualKeyUpdated", r#"{"keyId":1}"#)
        .await;
    env.publish(1, "after-update").await;
    assert_eq!(event_ids(&events(&mut a, 1).await), ["after-update"]);

    let mut key = env
        .store
        .key_by_id(KeyId::new(1).unwrap())
        .await
        .unwrap()
        .unwrap();
    key.enabled = false;
    env.store.put_key(&key).await.unwrap();
    env.publish_named(
        1,
        "u-1",
        "VirtualKeyUpdated",
        r#"{"keyId":1,"isEnabled":false}"#,
    )
    .await;
    let v = a.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":7,"error":"The key was disabled or has expired."})
    );
    a.expect_closed().await;

    env.store.delete_key(KeyId::new(2).unwrap()).await.unwrap();
    env.publish_named(2, "d-1", "VirtualKeyDeleted", r#"{"keyId":2}"#)
        .await;
    let v = b.next_non_ping().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":7,"error":"The key was deleted."})
    );
    b.expect_closed().await;

    let mut expiring = VirtualKey::new(KeyId::new(5).unwrap(), KeyHash::of_raw("condt_soon"), "s");
    expiring.expires_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(1500));
    env.store.put_key(&expiring).await.unwrap();
    let mut c = connect(addr, "/hubs/spend?access_token=condt_soon").await;
    let v = c.next_non_ping().await.unwrap();
    assert_eq!(v, serde_json::json!({"type":7,"error":"The key expired."}));
    c.expect_closed().await;
}

/// Issue 15's non-reading client: it keeps pinging (so the client timeout never fires) but never
/// reads, while events fill its socket buffers. Without a write deadline the session stayed stuck
/// in that write forever; now the write gives up after the client timeout and the connection ends.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_deadline() {
    let env = Env::new().await;
    let (addr, gw) = env
        .node(GatewayConfig {
            client_timeout: Duration::from_millis(800),
            // Large: the slow-consumer close must not be what ends it.
            outbound_queue_bytes: 256 * 1024 * 1024,
            ..config()
        })
        .await;
    let before = herald_telemetry::metrics().write_timeouts.get();
    let mut stalled = connect(addr, &format!("/hubs/spend?access_token={KEY_A}")).await;
    assert_eq!(gw.connections(), 1);
    let filler = "x".repeat(16 * 1024);
    for i in 0..2000 {
        let id = format!("fill-{i}");
        let payload = format!(r#"{{"eventId":"{id}","virtualKeyId":1,"filler":"{filler}"}}"#);
        env.publish_named(1, &id, "SpendUpdate", &payload).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gw.connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client that does not read is still connected 30 s later"
        );
        stalled.send("{\"type\":6}\u{1e}").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(herald_telemetry::metrics().write_timeouts.get() > before);
}

/// The MessagePack messages of a binary frame, decoded.
fn msgpack_messages(frame: &[u8]) -> Vec<Vec<rmpv::Value>> {
    let mut rest = frame;
    let mut out = Vec::new();
    while let Some((m, tail)) = herald_gateway::msgpack::take_message(rest, usize::MAX).unwrap() {
        let mut rd = m;
        match rmpv::decode::read_value(&mut rd).unwrap() {
            rmpv::Value::Array(items) => out.push(items),
            other => panic!("not an array: {other}"),
        }
        rest = tail;
    }
    assert!(rest.is_empty(), "whole messages per frame");
    out
}

fn msgpack(value: rmpv::Value) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, &value).unwrap();
    let mut out = vec![u8::try_from(body.len()).unwrap()];
    assert!(body.len() < 128);
    out.extend(body);
    out
}

/// The next non-Ping MessagePack message.
async fn next_msgpack(c: &mut Client) -> Option<Vec<rmpv::Value>> {
    loop {
        let frame = c.0.next_binary(WAIT).await.expect("no frame within 5 s")?;
        let msgs: Vec<_> = msgpack_messages(&frame)
            .into_iter()
            .filter(|m| m[0] != rmpv::Value::from(6))
            .collect();
        if let Some(m) = msgs.into_iter().next() {
            return Some(m);
        }
    }
}

#[tokio::test]
async fn messagepack_connections_get_binary_events_results_and_clean_refusals() {
    use rmpv::Value as Mp;
    let env = Env::new().await;
    let (addr, _gw) = env.node(config()).await;
    let path = format!("/hubs/spend?access_token={KEY_A}");
    let mut c = try_connect(addr, &path, &[]).await.unwrap();
    c.send("{\"protocol\":\"messagepack\",\"version\":1}\u{1e}")
        .await;
    // The handshake answer is JSON text, in a binary frame.
    let first = c.0.next_binary(WAIT).await.unwrap().unwrap();
    assert_eq!(first, b"{}\x1e");

    env.publish(1, "mp-1").await;
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(
        &m[..4],
        &[
            Mp::from(1),
            Mp::Map(vec![]),
            Mp::Nil,
            Mp::from("SpendUpdate")
        ]
    );
    let Mp::Array(args) = &m[4] else {
        panic!("{m:?}")
    };
    let Mp::Map(fields) = &args[0] else {
        panic!("{m:?}")
    };
    let field = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("eventId"), Some(Mp::from("mp-1")));
    assert_eq!(field("totalSpend"), Some(Mp::from("12.50")));
    assert_eq!(field("newSpend"), Some(Mp::from("0.000123")));
    assert_eq!(field("virtualKeyId"), Some(Mp::from(1)));
    let cursor = field("cursor").unwrap().as_str().unwrap().to_owned();
    assert!(Cursor::decode(&cursor).is_ok());

    // A method's result, a method's error (the cursor is the same string JSON would carry).
    let call = |id: &str, target: &str, args: Vec<Mp>| {
        msgpack(Mp::Array(vec![
            Mp::from(1),
            Mp::Map(vec![]),
            Mp::from(id),
            Mp::from(target),
            Mp::Array(args),
        ]))
    };
    c.0.send_binary(call("1", "Resume", vec![Mp::from(cursor.as_str())]))
        .await
        .unwrap();
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(
        m,
        vec![
            Mp::from(3),
            Mp::Map(vec![]),
            Mp::from("1"),
            Mp::from(3),
            Mp::Map(vec![(Mp::from("replayed"), Mp::from(0))])
        ]
    );
    c.0.send_binary(call("2", "Nope", vec![])).await.unwrap();
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(
        m,
        vec![
            Mp::from(3),
            Mp::Map(vec![]),
            Mp::from("2"),
            Mp::from(1),
            Mp::from("Unknown hub method 'Nope'")
        ]
    );
    // A client Ping is fine; the connection still delivers.
    c.0.send_binary(msgpack(Mp::Array(vec![Mp::from(6)])))
        .await
        .unwrap();
    env.publish(1, "mp-2").await;
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(m[3], Mp::from("SpendUpdate"));

    // Bytes that are no MessagePack: Close without reconnect, then the socket ends.
    c.0.send_binary(vec![0x02, 0xc1, 0x00]).await.unwrap();
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(m[0], Mp::from(7));
    assert!(
        m[1].as_str().unwrap().starts_with("Invalid message"),
        "{m:?}"
    );
    assert_eq!(m[2], Mp::from(false));
    assert!(c.0.next_binary(WAIT).await.unwrap().is_none());

    // A declared length over the message limit is refused before anything is read.
    let mut c = try_connect(addr, &path, &[]).await.unwrap();
    c.send("{\"protocol\":\"messagepack\",\"version\":1}\u{1e}")
        .await;
    assert_eq!(c.0.next_binary(WAIT).await.unwrap().unwrap(), b"{}\x1e");
    c.0.send_binary(vec![0xff, 0xff, 0x7f, 0x91]).await.unwrap();
    let m = next_msgpack(&mut c).await.unwrap();
    assert_eq!(m[0], Mp::from(7));
    assert_eq!(
        m[1],
        Mp::from("Message exceeds the maximum size of 32768 bytes.")
    );
}
