//! Issue 15's hub probes against a real `herald` process on port 0 (docs/security.md,
//! "Limits"): per-key and per-address connection caps on every transport, bounded echo of
//! client input in hub errors, and memory while many clients stop reading. Each fails on a
//! server without the limit (a connection past the cap is admitted, a 20 KB name comes back,
//! a non-reading client stays open), and each checks that other clients are served meanwhile.
#![allow(clippy::unwrap_used)]
mod common;

use common::process::{Herald, sample};
use common::*;
use herald_signalr_client::{Client, ConnectError};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The longest any bounded wait below may take: far above what each step needs.
const WAIT: Duration = Duration::from_secs(20);
const PING: &str = "{\"type\":6}\u{1e}";

fn herald(env: &[(&str, &str)]) -> Herald {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Herald::start(&["standalone"], &env)
}

/// A WebSocket to `hub` with `key`, as if from `address` (the proxy header the node trusts).
async fn ws(node: &Herald, hub: &str, key: &str, address: &str) -> Result<Client, u16> {
    let url = format!("ws://{}/hubs/{hub}?access_token={key}", node.addr);
    match Client::open(&url, &[("X-Forwarded-For", address)]).await {
        Ok(mut c) => {
            c.handshake(WAIT).await.unwrap();
            Ok(c)
        }
        Err(ConnectError::Refused(status)) => Err(status),
        Err(ConnectError::Other(e)) => panic!("{e}"),
    }
}

/// The full answer to a WebSocket upgrade request that is refused (status line to body).
async fn refused_upgrade(node: &Herald, key: &str, address: &str) -> String {
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let req = format!(
        "GET /hubs/spend?access_token={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nX-Forwarded-For: {address}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        // The head, then the text line of the body.
        while !String::from_utf8_lossy(&got).contains("later\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    String::from_utf8_lossy(&got).into_owned()
}

async fn spend(node: &Herald, key_id: i64, id: &str) {
    let event = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/billing","type":"SpendUpdated","data":{{"keyId":{key_id},"amount":1,"newTotalSpend":1}}}}"#
    );
    let bearer = format!("Bearer {MASTER_KEY}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/cloudevents+json"),
    ];
    let r = http(node.internal(), "POST", "/v1/events", &headers, &event).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

/// The next invocation's event id, skipping pings; panics after `WAIT`.
async fn next_event(c: &mut Client) -> String {
    loop {
        let m = c.next_message(WAIT).await.unwrap().expect("open");
        if m["type"] == 1 {
            return m["arguments"][0]["eventId"]
                .as_str()
                .unwrap_or("")
                .to_owned();
        }
    }
}

async fn rejected(node: &Herald, reason: &str) -> f64 {
    let m = node.metrics().await;
    sample(
        &m,
        "herald_connections_rejected_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_for_one_key_from_one_address_is_refused_past_the_caps_while_others_connect() {
    let node = herald(&[
        ("HERALD_MAX_CONNECTIONS_PER_KEY", "20"),
        ("HERALD_MAX_CONNECTIONS_PER_ADDRESS", "30"),
        ("HERALD_CLIENT_ADDRESS_HEADER", "X-Forwarded-For"),
    ]);
    node.wait_ready().await;
    let (a, b) = (
        node.create_key(21, "100").await,
        node.create_key(22, "100").await,
    );
    // 40 connections of key 1 from one address: 20 are admitted, then every one is refused.
    let mut held_a = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match ws(&node, "spend", &a, "10.1.1.1").await {
            Ok(c) => held_a.push(c),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert_eq!((held_a.len(), refused), (20, 20));
    let text = refused_upgrade(&node, &a, "10.9.9.9").await;
    assert!(
        text.starts_with("HTTP/1.1 429") && text.contains("HERALD_MAX_CONNECTIONS_PER_KEY"),
        "the key cap applies from every address: {text}"
    );
    // Another key from the same address fills the address's remaining 10 places, then is refused.
    let mut held_b = Vec::new();
    for _ in 0..10 {
        held_b.push(ws(&node, "spend", &b, "10.1.1.1").await.unwrap());
    }
    let text = refused_upgrade(&node, &b, "10.1.1.1").await;
    assert!(
        text.starts_with("HTTP/1.1 429") && text.contains("HERALD_MAX_CONNECTIONS_PER_ADDRESS"),
        "{text}"
    );
    // The proxy header's last address is the one counted.
    let mut other = ws(&node, "spend", &b, "10.1.1.1, 10.2.2.2").await.unwrap();
    // Everyone admitted is served: key 2 from the other address, key 1's held connections.
    spend(&node, 22, "caps-b-1").await;
    assert_eq!(next_event(&mut other).await, "caps-b-1");
    assert_eq!(next_event(&mut held_b[9]).await, "caps-b-1");
    spend(&node, 21, "caps-a-1").await;
    assert_eq!(next_event(&mut held_a[19]).await, "caps-a-1");
    assert!(rejected(&node, "key_limit").await >= 21.0);
    assert!(rejected(&node, "address_limit").await >= 1.0);

    // Counting is exact across disconnects: 5 closed give exactly 5 places back.
    held_a.truncate(15);
    let mut back = 0;
    let refill = async {
        while back < 5 {
            match ws(&node, "spend", &a, "10.3.3.3").await {
                Ok(c) => {
                    held_a.push(c);
                    back += 1;
                }
                // The server notices the closes a moment later.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(WAIT, refill)
        .await
        .expect("closed connections give their places back");
    assert_eq!(ws(&node, "spend", &a, "10.3.3.3").await.err(), Some(429));
}

/// A negotiated long-polling connection started by its first poll: the poll's status and body.
async fn start_long_poll(node: &Herald, key: &str, address: &str) -> (u16, String, String) {
    let bearer = format!("Bearer {key}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("X-Forwarded-For", address),
    ];
    let n = http(
        node.addr,
        "POST",
        "/hubs/spend/negotiate?negotiateVersion=1",
        &headers,
        "",
    )
    .await;
    assert_eq!(n.status, 200, "{}", n.body);
    let token = n.json()["connectionToken"].as_str().unwrap().to_owned();
    let r = http(
        node.addr,
        "GET",
        &format!("/hubs/spend?id={token}"),
        &headers,
        "",
    )
    .await;
    (r.status, r.body, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caps_hold_for_long_polling_and_count_every_transport_together() {
    let node = herald(&[
        ("HERALD_MAX_CONNECTIONS_PER_KEY", "5"),
        ("HERALD_CLIENT_ADDRESS_HEADER", "X-Forwarded-For"),
    ]);
    node.wait_ready().await;
    let (a, b) = (
        node.create_key(21, "100").await,
        node.create_key(22, "100").await,
    );
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let (status, body, token) = start_long_poll(&node, &a, "10.1.1.1").await;
        assert_eq!(status, 200, "{body}");
        tokens.push(token);
    }
    let (status, body, _) = start_long_poll(&node, &a, "10.1.1.1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("HERALD_MAX_CONNECTIONS_PER_KEY"), "{body}");
    // One count over every transport: a WebSocket of the same key is refused too.
    assert_eq!(ws(&node, "spend", &a, "10.4.4.4").await.err(), Some(429));
    // Another key keeps connecting and receiving.
    let (status, _, _) = start_long_poll(&node, &b, "10.1.1.1").await;
    assert_eq!(status, 200);
    let mut c = ws(&node, "spend", &b, "10.1.1.1").await.unwrap();
    spend(&node, 22, "caps-lp-b").await;
    assert_eq!(next_event(&mut c).await, "caps-lp-b");
    // A DELETE ends a connection and frees its place.
    let bearer = format!("Bearer {a}");
    let r = http(
        node.addr,
        "DELETE",
        &format!("/hubs/spend?id={}", tokens[0]),
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let again = async {
        loop {
            let (status, _, _) = start_long_poll(&node, &a, "10.1.1.1").await;
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, again)
        .await
        .expect("the ended connection's place is free");
    let (status, _, _) = start_long_poll(&node, &a, "10.1.1.1").await;
    assert_eq!(status, 429, "exactly one place came back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_kb_method_name_gets_a_bounded_error_and_the_connection_stays_usable() {
    let node = herald(&[]);
    node.wait_ready().await;
    let key = node.create_key(21, "100").await;
    let mut c = ws(&node, "spend", &key, "127.0.0.1").await.unwrap();
    let name = "M".repeat(20_000);
    let done = c.invoke(&name, json!([]), WAIT).await.unwrap();
    let error = done["error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(&format!("Unknown hub method '{}", "M".repeat(64)))
            && error.contains("(20000 bytes)")
            && error.len() < 200,
        "{} bytes: {}",
        error.len(),
        &error[..error.len().min(300)]
    );
    // A streaming call quotes the name the same way.
    let record = format!(r#"{{"type":4,"invocationId":"s1","target":"{name}","arguments":[]}}"#);
    c.send(&format!("{record}\u{1e}")).await.unwrap();
    let m = loop {
        let m: Value = c.next_message(WAIT).await.unwrap().expect("open");
        if m["type"] == 3 {
            break m;
        }
    };
    let error = m["error"].as_str().unwrap_or("");
    assert!(
        error.len() < 200 && error.contains("(20000 bytes)"),
        "{}",
        error.len()
    );
    spend(&node, 21, "echo-1").await;
    assert_eq!(next_event(&mut c).await, "echo-1");
}

/// A WebSocket client that completes the SignalR handshake and then never reads again, with a
/// small receive buffer of its own (so the test's side pins little kernel memory).
async fn non_reading_client(addr: SocketAddr, key: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = format!(
        "GET /hubs/notifications?access_token={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Exactly the 101 head, one byte at a time: nothing after it is read.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "upgrade answered: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The handshake as one masked text frame (clients must mask).
    let payload = b"{\"protocol\":\"json\",\"version\":1}\x1e";
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    s
}

/// Kernel memory of every TCP socket on the machine, in KiB (`/proc/net/sockstat`, pages).
fn tcp_kernel_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4
}

/// A ModelsDiscovered event of about 100 KB (it reaches `/hubs/notifications`).
async fn big_event(node: &Herald, id: &str) {
    let models: Vec<String> = (0..2000)
        .map(|i| format!("model-{i:06}-{}", "m".repeat(36)))
        .collect();
    let body = json!({
        "messageId": id,
        "messageType": ["urn:message:ConduitLLM.Core.Events:ModelsDiscovered"],
        "message": {"ProviderId": 3, "ProviderName": "openai", "Models": models},
        "sentTime": "2026-11-22T10:02:00Z",
    })
    .to_string();
    let bearer = format!("Bearer {MASTER_KEY}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/vnd.masstransit+json"),
    ];
    let r = http(node.internal(), "POST", "/v1/events", &headers, &body).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_stop_reading_are_closed_by_the_write_deadline_with_memory_bounded() {
    const CLIENTS: usize = 200;
    let node = herald(&[]);
    node.wait_ready().await;
    let key = node.create_key(21, "100").await;
    let mut reader = ws(&node, "notifications", &key, "127.0.0.1").await.unwrap();
    let (rss0, kernel0) = (node.rss_kib(), tcp_kernel_kib());
    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        stalled.push(non_reading_client(node.addr, &key).await);
    }
    let open = async {
        loop {
            let m = node.metrics().await;
            if sample(&m, "herald_connections", &[("hub", "notifications")]) >= (CLIENTS + 1) as f64
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, open)
        .await
        .expect("every client connected");
    // 60 events of ~100 KB: 6 MB for each client, far beyond what the socket buffers take.
    let (mut rss_peak, mut kernel_peak) = (rss0, kernel0);
    for i in 0..60 {
        big_event(&node, &format!("big-{i}")).await;
        // The reading client is served all along.
        assert_eq!(next_event(&mut reader).await, format!("big-{i}"));
        rss_peak = rss_peak.max(node.rss_kib());
        kernel_peak = kernel_peak.max(tcp_kernel_kib());
    }
    // Every stalled client is dropped within the write deadline (30 s) of its stuck write.
    let closed = async {
        loop {
            // The reader keeps its side alive (the client timeout is 30 s too).
            reader.send(PING).await.unwrap();
            rss_peak = rss_peak.max(node.rss_kib());
            kernel_peak = kernel_peak.max(tcp_kernel_kib());
            let m = node.metrics().await;
            if sample(&m, "herald_connections", &[("hub", "notifications")]) <= 1.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let m = tokio::time::timeout(Duration::from_secs(90), closed)
        .await
        .expect("the stalled clients were closed");
    let timeouts = sample(&m, "herald_write_timeouts_total", &[]);
    let kernel_closed = tcp_kernel_kib();
    // The reader is still served.
    big_event(&node, "after-stall").await;
    assert_eq!(next_event(&mut reader).await, "after-stall");
    drop(stalled);
    let kernel_after = async {
        loop {
            let k = tcp_kernel_kib();
            // Other tests on the machine use sockets too: near the start, not exactly it.
            if k <= kernel0 + 64 * 1024 {
                return k;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let kernel_end = tokio::time::timeout(WAIT, kernel_after)
        .await
        .expect("kernel socket memory returned near its start");
    println!(
        "{CLIENTS} stalled clients: write timeouts {timeouts}; RSS {rss0} -> peak {rss_peak} KiB; \
         TCP kernel memory {kernel0} -> peak {kernel_peak} -> {kernel_closed} when the server \
         had closed them -> {kernel_end} KiB after the clients went"
    );
    assert!(timeouts >= 1.0, "closed by the write deadline");
    // Each stalled connection holds at most the server's send buffer (256 KiB, SO_SNDBUF) and
    // this test's receive buffer (32 KiB): without the cap, autotuning let each pin ~4 MiB.
    // Machine-wide figure, so other tests' sockets get 64 MiB of slack.
    let bound = kernel0 + CLIENTS as u64 * (256 + 64) + 64 * 1024;
    assert!(
        kernel_peak < bound,
        "TCP kernel memory peak {kernel_peak} KiB, bound {bound}"
    );
    assert!(
        kernel_closed < bound,
        "TCP kernel memory {kernel_closed} KiB once closed"
    );
    // Bounded by the outbound queue (1 MiB) and one frame per connection, plus slack.
    assert!(
        rss_peak < rss0 + CLIENTS as u64 * 1300 + 64 * 1024,
        "RSS {rss0} -> {rss_peak} KiB"
    );
}
