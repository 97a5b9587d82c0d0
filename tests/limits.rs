//! Issue 15's probes against a real `herald` process on port 0 (docs/security.md, "Limits"):
//! slowloris headers, held bodies, idle keep-alive, the global connection limit, failed-auth
//! throttling and a 1e28 budget. Each probe fails on a server without the limit (the bounded
//! wait for the close or refusal runs out), and each checks that a legitimate client is served
//! meanwhile and that the process's memory and descriptors stay bounded.
#![allow(clippy::unwrap_used)]
mod common;

use common::process::{Herald, real_env, sample};
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The longest any bounded wait below may take: far above the limits configured here.
const WAIT: Duration = Duration::from_secs(20);

/// Standalone, in memory, with `env` on top (short limits so probes end quickly).
fn herald(env: &[(&str, &str)]) -> Herald {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Herald::start(&["standalone"], &env)
}

/// Reads until the peer closes; `Err` if it is still open after `WAIT`.
async fn until_closed(s: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| "still open")?;
    Ok(got)
}

/// One raw request on a connection that may stay open: the status line and headers.
async fn head_of(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("an answer");
    String::from_utf8_lossy(&got).into_owned()
}

async fn healthz(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/healthz", &[], "").await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_after_the_header_timeout_while_healthz_answers() {
    let node = herald(&[("HERALD_HTTP_HEADER_TIMEOUT", "1s")]);
    node.wait_ready().await;
    let (rss, fds) = (node.rss_kib(), node.open_fds());
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // A real client is served while they hang.
    assert_eq!(healthz(node.addr).await, 200);
    for s in &mut slow {
        // A byte now and then does not extend the head's deadline.
        let _ = s.write_all(b"a").await;
    }
    for s in &mut slow {
        let got = until_closed(s)
            .await
            .expect("closed after the header timeout");
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{got:?}"
        );
    }
    assert_eq!(healthz(node.addr).await, 200);
    assert!(node.open_fds() <= fds + 5, "descriptors back to {fds}");
    assert!(
        node.rss_kib() < rss + 40 * 1024,
        "RSS {} KiB from {rss}",
        node.rss_kib()
    );
    let m = node.metrics().await;
    assert!(
        sample(
            &m,
            "herald_http_refused_total",
            &[("reason", "header_timeout")]
        ) >= 300.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    // The failed-auth throttle (its own test) would answer most of them 429: set it aside.
    let node = herald(&[
        ("HERALD_HTTP_BODY_TIMEOUT", "2s"),
        ("HERALD_AUTH_FAILURE_LIMIT", "1000"),
    ]);
    node.wait_ready().await;
    let rss = node.rss_kib();
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        // 2 MB announced, 16 KB sent, the rest held back.
        s.write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
        )
        .await
        .unwrap();
        s.write_all(&[b' '; 16 * 1024]).await.unwrap();
        held.push(s);
    }
    for s in &mut held {
        let got = until_closed(s)
            .await
            .expect("answered and closed without the body");
        assert!(
            got.starts_with(b"HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(healthz(node.addr).await, 200);
    assert!(
        node.rss_kib() < rss + 40 * 1024,
        "RSS {} KiB from {rss}",
        node.rss_kib()
    );

    // With the master key: an announced body over the limit is refused unread, a body that
    // stops coming is refused after the body timeout, an unexpected media type is 415.
    let auth = format!("Authorization: Bearer {MASTER_KEY}\r\n");
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let req =
        format!("POST /v1/events HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 2000000\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(head_of(&mut s).await.starts_with("HTTP/1.1 413"));
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let req = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{{");
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(head_of(&mut s).await.starts_with("HTTP/1.1 408"));
    let bearer = format!("Bearer {MASTER_KEY}");
    let r = http(
        node.addr,
        "POST",
        "/v1/keys",
        &[("Authorization", &bearer), ("Content-Type", "text/plain")],
        r#"{"id":3}"#,
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_while_websockets_stay_open() {
    let node = herald(&[
        ("HERALD_HTTP_IDLE_TIMEOUT", "1s"),
        ("HERALD_HTTP_HEADER_TIMEOUT", "10s"),
    ]);
    node.wait_ready().await;
    let key = node.create_key(2, "10").await;
    let mut ws = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(head_of(&mut idle).await.starts_with("HTTP/1.1 200"));
    until_closed(&mut idle)
        .await
        .expect("an idle keep-alive connection is closed");
    // The WebSocket, idle as long, is not an idle HTTP connection.
    assert!(
        !matches!(
            ws.next_or_close(Duration::from_millis(500)).await,
            Next::Closed
        ),
        "the WebSocket stays open"
    );
    let done = ws.invoke("SubscribeToSpend", serde_json::json!([])).await;
    assert_eq!(done["type"], 3, "{done}");
    assert_eq!(healthz(node.addr).await, 200);
    let m = node.metrics().await;
    assert!(
        sample(
            &m,
            "herald_http_refused_total",
            &[("reason", "idle_timeout")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_limit_refuses_with_503_and_the_admin_port_stays_reachable() {
    let node = herald(&[
        ("HERALD_HTTP_MAX_CONNECTIONS", "50"),
        ("HERALD_HTTP_HEADER_TIMEOUT", "60s"),
        ("HERALD_ADMIN_LISTEN", "127.0.0.1:0"),
    ]);
    node.wait_ready().await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // Accepted connections are counted in the order the server takes them: wait for the gauge.
    let full = async {
        while sample(&node.metrics().await, "herald_http_connections", &[]) < 50.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, full).await.expect("50 open");
    let mut extra = TcpStream::connect(node.addr).await.unwrap();
    let got = until_closed(&mut extra).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.contains("connection limit"),
        "{text}"
    );
    let m = node.metrics().await;
    assert!(
        sample(
            &m,
            "herald_http_refused_total",
            &[("reason", "connection_limit")]
        ) >= 1.0
    );
    drop(held);
    let back = async {
        while healthz(node.addr).await != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, back)
        .await
        .expect("served again");
}

/// A connection to `addr` from another loopback address (another client, as the server sees it).
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_throttled_per_address_with_retry_after() {
    let node = herald(&[("HERALD_AUTH_FAILURE_LIMIT", "5")]);
    node.wait_ready().await;
    let key = node.create_key(4, "10").await;
    let guess = "POST /hubs/spend/negotiate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer guess\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(guess.as_bytes()).await.unwrap();
        statuses.push(head_of(&mut s).await);
    }
    assert!(
        statuses[..5].iter().all(|h| h.starts_with("HTTP/1.1 401")),
        "{statuses:?}"
    );
    for h in &statuses[5..] {
        assert!(h.starts_with("HTTP/1.1 429"), "{h}");
        assert!(h.to_ascii_lowercase().contains("retry-after:"), "{h}");
    }
    // The right key from the same address waits too; another address is served.
    let mut same = TcpStream::connect(node.addr).await.unwrap();
    let good = format!(
        "POST /hubs/spend/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    same.write_all(good.as_bytes()).await.unwrap();
    assert!(head_of(&mut same).await.starts_with("HTTP/1.1 429"));
    let mut other = connect_from("127.0.0.2", node.addr).await;
    other.write_all(good.as_bytes()).await.unwrap();
    assert!(head_of(&mut other).await.starts_with("HTTP/1.1 200"));
    let m = node.metrics().await;
    assert!(
        sample(
            &m,
            "herald_http_refused_total",
            &[("reason", "auth_throttled")]
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1e28_budget_is_refused_with_400_and_the_service_keeps_serving() {
    if !services_up().await {
        return skip(
            "a_1e28_budget…",
            "RabbitMQ, Redis and PostgreSQL on loopback",
        );
    }
    let env = real_env("limits-budget").await;
    let mut vars = env.vars.clone();
    vars.push(("HERALD_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let node = Herald::start(&["standalone"], &vars);
    node.wait_ready().await;
    let admin = node.internal();
    let bearer = format!("Bearer {MASTER_KEY}");
    let json = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = http(
        admin,
        "POST",
        "/v1/keys",
        &json,
        r#"{"id":9,"budget":1e28}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains("MAX_BUDGET") && error.contains("1000000000000"),
        "{error}"
    );
    let long = format!(r#"{{"id":9,"budget":{}}}"#, "9".repeat(100_000));
    let r = http(admin, "POST", "/v1/keys", &json, &long).await;
    assert_eq!(
        r.status, 413,
        "a 100 KB key request is over the /v1/keys limit"
    );
    let r = http(admin, "POST", "/v1/keys", &json, &long[..15_000]).await;
    assert!(
        r.status == 400 && r.body.len() < 1024,
        "bounded echo: {}",
        r.body.len()
    );
    // The master key in the query string is refused on the admin API.
    let q = format!("/v1/keys?access_token={MASTER_KEY}");
    let r = http(
        admin,
        "POST",
        &q,
        &[("Content-Type", "application/json")],
        r#"{"id":9}"#,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Still serving: a key, a spend event and its alert, and the client port.
    let key = node.create_key(9, "100").await;
    let mut client = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();
    let event = r#"{"specversion":"1.0","id":"ce-limits-1","source":"/billing","type":"SpendUpdated","data":{"keyId":9,"amount":60,"newTotalSpend":60}}"#;
    let ce = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/cloudevents+json"),
    ];
    let r = http(admin, "POST", "/v1/events", &ce, event).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (name, _) = client.next_invocation(WAIT).await.expect("SpendUpdate");
    assert_eq!(name, "SpendUpdate");
    // The client port serves clients only.
    for path in ["/v1/keys", "/metrics", "/readyz"] {
        let r = http(node.addr, "GET", path, &[], "").await;
        assert_eq!(r.status, 404, "{path} on the client port");
    }
    assert_eq!(healthz(node.addr).await, 200);

    // The command line refuses the same budget, naming the limit.
    let url = env
        .vars
        .iter()
        .find(|(k, _)| *k == "HERALD_DATABASE_URL")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--id", "10", "--budget", "1e28"])
        .env("HERALD_DATABASE_URL", &url.1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("MAX_BUDGET"),
        "{stderr}"
    );
}

async fn services_up() -> bool {
    let up = |a: &str| {
        let a: SocketAddr = a.parse().unwrap();
        async move {
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(a))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    };
    up("127.0.0.1:5672").await && up("127.0.0.1:6379").await && up("127.0.0.1:5432").await
}
