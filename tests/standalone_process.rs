//! `herald` with no configuration at all, as a real process: it prints where it listens, a
//! master key and a demo key, takes events over HTTP and delivers them to a SignalR client.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Node {
    child: Child,
    addr: std::net::SocketAddr,
    master: String,
    demo: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &[(&str, &str)]) -> Node {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in [
        "HERALD_AMQP_URL",
        "HERALD_REDIS_URL",
        "HERALD_DATABASE_URL",
        "HERALD_MASTER_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HERALD_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut master, mut demo) = (None, None, None);
    while addr.is_none() || master.is_none() || demo.is_none() {
        let line = lines.next().expect("herald printed its banner").unwrap();
        if let Some(a) = line.strip_prefix("listening on http://") {
            addr = Some(a.parse().unwrap());
        } else if let Some(m) = line.strip_prefix("master key: ") {
            master = Some(m.to_string());
        } else if let Some((_, k)) = line.split_once("demo virtual key (id 1, budget 10.00): ") {
            demo = Some(k.to_string());
        }
    }
    Node {
        child,
        addr: addr.unwrap(),
        master: master.unwrap(),
        demo: demo.unwrap(),
    }
}

#[tokio::test]
async fn runs_with_no_configuration_and_delivers_events_posted_over_http() {
    let node = start(&[]);
    assert!(
        node.demo.starts_with("condt_") && node.demo.len() == 38,
        "{}",
        node.demo
    );
    assert_eq!(
        http(node.addr, "GET", "/healthz", &[], "").await.status,
        200
    );
    assert_eq!(http(node.addr, "GET", "/readyz", &[], "").await.status, 200);
    let mut client = SignalR::connect(&format!(
        "ws://{}/hubs/spend?access_token={}",
        node.addr, node.demo
    ))
    .await
    .unwrap();
    let event = r#"{"specversion":"1.0","id":"ce-1","source":"/billing","type":"SpendUpdated","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{"keyId":1,"amount":7.10,"newTotalSpend":7.10}}"#;
    let auth = format!("Bearer {}", node.master);
    let denied = http(
        node.addr,
        "POST",
        "/v1/events",
        &[("Content-Type", "application/cloudevents+json")],
        event,
    )
    .await;
    assert_eq!(denied.status, 401);
    let r = http(
        node.addr,
        "POST",
        "/v1/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/cloudevents+json"),
        ],
        event,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let raw = client.next_text(Duration::from_secs(10)).await.unwrap();
    assert!(raw.contains(r#""totalSpend":7.10"#), "{raw}");
    let (name, alert) = client
        .next_invocation(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (name.as_str(), alert["alertType"].as_str()),
        ("BudgetAlert", Some("budget_50_percent"))
    );
    let bad = http(
        node.addr,
        "POST",
        "/v1/events",
        &[("Authorization", &auth)],
        "{\"nope\":1}",
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["error"].is_string());
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_HISTORY_TTL", "forever")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HERALD_HISTORY_TTL") && err.contains("expected"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env_remove("HERALD_REDIS_URL")
        .env("HERALD_DATABASE_URL", "postgres://x@127.0.0.1/x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERALD_REDIS_URL"));
}

#[test]
fn keys_create_prints_exactly_the_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(create_database());
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "keys", "create", "--id", "9", "--name", "cli", "--budget", "25.00", "--period",
            "monthly",
        ])
        .env("HERALD_DATABASE_URL", database_url(&db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    let key = stdout.trim_end();
    assert!(
        key.starts_with("condt_")
            && key.len() == 38
            && key[6..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key}"
    );
    // The same id again is refused with a clear message.
    let again = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--id", "9", "--name", "cli"])
        .env("HERALD_DATABASE_URL", database_url(&db))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // Without a database the command says which variable it needs.
    let none = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--id", "1"])
        .env_remove("HERALD_DATABASE_URL")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&none.stderr).contains("HERALD_DATABASE_URL"));
}

#[tokio::test]
async fn sigterm_closes_connections_with_allow_reconnect_and_exits_zero() {
    let mut node = start(&[("HERALD_DRAIN_WINDOW", "1s")]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(
            SignalR::connect(&format!(
                "ws://{}/hubs/spend?access_token={}",
                node.addr, node.demo
            ))
            .await
            .unwrap(),
        );
    }
    let term = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    for c in &mut clients {
        let mut close = None;
        while let Some(m) = c.next_raw_message(Duration::from_secs(10)).await {
            if m["type"] == 7 {
                close = Some(m);
                break;
            }
        }
        let close = close.expect("a Close before the socket ends");
        assert_eq!(close["allowReconnect"], true, "{close}");
    }
    let status = tokio::task::spawn_blocking(move || node.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful exit");
}
