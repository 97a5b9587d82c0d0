//! Issue 2's end-to-end slice against real RabbitMQ, Redis and PostgreSQL.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn masstransit_spend_reaches_the_client_with_exact_decimals_and_alerts_once() {
    let app = spawn_app_on_conduit_exchanges().await;
    let key = app.create_key(42, Some("10.00")).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/spend", &format!("access_token={key}")))
        .await
        .unwrap();

    publish_spend(&app, "m-1", 42, "0.000123", "6.50").await;
    let raw = client.next_text(WAIT).await.expect("SpendUpdate frame");
    assert!(raw.contains(r#""target":"SpendUpdate""#), "{raw}");
    assert!(raw.contains(r#""newSpend":0.000123"#), "digits kept: {raw}");
    assert!(raw.contains(r#""totalSpend":6.50"#), "digits kept: {raw}");
    assert!(raw.contains(r#""budget":10.00"#), "{raw}");
    assert!(raw.contains(r#""budgetPercentage":65"#), "{raw}");
    assert!(raw.contains(r#""virtualKeyId":42"#), "{raw}");
    assert!(raw.contains(r#""eventId":"m-1""#), "{raw}");
    assert!(raw.contains(r#""cursor":""#), "{raw}");
    let (name, alert) = client.next_invocation(WAIT).await.expect("BudgetAlert");
    assert_eq!(name, "BudgetAlert");
    assert_eq!(alert["alertType"], "budget_50_percent");
    assert_eq!(alert["severity"], "info");
    assert_eq!(alert["sourceEventId"], "m-1");
    assert_eq!(alert["remaining"].to_string(), "3.5");

    // The same message again (a redelivery): nothing new.
    publish_spend(&app, "m-1", 42, "0.000123", "6.50").await;
    // A later event proves the consumer went past the repeat.
    publish_spend(&app, "m-2", 42, "0.25", "6.75").await;
    let (name, next) = client.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), next["eventId"].as_str()),
        ("SpendUpdate", Some("m-2")),
        "the repeat produced nothing: {next}"
    );

    // Crossing 90 from 67.5: one alert for the highest threshold crossed. m-3 comes next in the
    // key's stream: no second alert came before it.
    publish_spend(&app, "m-3", 42, "3.00", "9.75").await;
    let (name, su) = client.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), su["eventId"].as_str()),
        ("SpendUpdate", Some("m-3")),
        "no second alert: {su}"
    );
    let (name, alert) = client.next_invocation(WAIT).await.unwrap();
    assert_eq!(name, "BudgetAlert");
    assert_eq!(
        (alert["threshold"].as_u64(), alert["severity"].as_str()),
        (Some(90), Some("critical"))
    );
    // A marker of the same key that crosses nothing comes next: 75 was jumped over, not alerted.
    publish_spend(&app, "m-4", 42, "0.01", "9.76").await;
    let (name, next) = client.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), next["eventId"].as_str()),
        ("SpendUpdate", Some("m-4")),
        "75 was jumped over, not alerted: {next}"
    );
}

#[tokio::test]
async fn bad_keys_get_401() {
    let app = spawn_app().await;
    let good = app.create_key(7, None).await;
    assert_eq!(
        upgrade_status(&app.ws_url("/hubs/spend", "access_token=condt_nope")).await,
        401
    );
    assert_eq!(upgrade_status(&app.ws_url("/hubs/spend", "")).await, 401);
    let negotiate = http(
        app.addr,
        "POST",
        "/hubs/spend/negotiate?negotiateVersion=1&access_token=condt_nope",
        &[],
        "",
    )
    .await;
    assert_eq!(negotiate.status, 401);
    let ok = http(
        app.addr,
        "POST",
        &format!("/hubs/spend/negotiate?negotiateVersion=1&access_token={good}"),
        &[],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["connectionToken"].is_string());
    // The raw key never shows up in the response.
    assert!(!ok.body.contains(&good));
}

#[tokio::test]
async fn a_client_of_key_a_receives_nothing_of_key_b() {
    let app = spawn_app().await;
    let a = app.create_key(101, Some("100")).await;
    let b = app.create_key(102, Some("100")).await;
    let mut ca = SignalR::connect(&app.ws_url("/hubs/spend", &format!("access_token={a}")))
        .await
        .unwrap();
    let mut cb =
        SignalR::connect(&app.ws_url("/hubs/spend-notifications", &format!("api_key={b}")))
            .await
            .unwrap();
    for i in 0..5 {
        publish_spend(
            &app,
            &format!("b-{i}"),
            102,
            "30",
            &format!("{}", 30 * (i + 1)),
        )
        .await;
    }
    publish_spend(&app, "a-0", 101, "1", "1").await;
    // B's marker (crosses nothing more): everything of B is written once it arrives.
    publish_spend(&app, "b-5", 102, "0", "150").await;
    let got_b = cb.until_markers(&["b-4", "b-5"], WAIT).await;
    for (name, ev) in &got_b {
        assert_eq!(ev["virtualKeyId"], 102, "{name}: {ev}");
    }
    let count = |n: &str| got_b.iter().filter(|(name, _)| name == n).count();
    // 30, 60 (50 %), 90 (90 %, 75 passed over), 120 (100 %), 150, 150.
    assert_eq!((count("SpendUpdate"), count("BudgetAlert")), (6, 3));
    // Then A's marker: A holds exactly its own two events — nothing of B came before it.
    publish_spend(&app, "a-1", 101, "1", "2").await;
    let got_a: Vec<(String, String)> = ca
        .until_markers(&["a-0", "a-1"], WAIT)
        .await
        .into_iter()
        .map(|(n, ev)| (n, ev["eventId"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        got_a,
        [
            ("SpendUpdate".to_owned(), "a-0".to_owned()),
            ("SpendUpdate".to_owned(), "a-1".to_owned()),
        ],
        "nothing of key B reached A"
    );
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_with_its_reason_and_the_next_good_one_flows() {
    let app = spawn_app().await;
    let key = app.create_key(5, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/spend", &format!("access_token={key}")))
        .await
        .unwrap();
    // Garbage to herald's own topic exchange, and a valid envelope with a negative amount.
    amqp_publish(
        &app.queue,
        lapin::ExchangeKind::Topic,
        "SpendUpdated",
        b"{not json",
        "application/json",
    )
    .await;
    let negative = masstransit_spend("neg-1", 5, "-3", "1");
    amqp_publish(
        &app.exchange("SpendUpdated"),
        lapin::ExchangeKind::Fanout,
        "",
        negative.as_bytes(),
        "application/vnd.masstransit+json",
    )
    .await;
    publish_spend(&app, "good-1", 5, "1.5", "1.5").await;
    let (name, ev) = client
        .next_invocation(WAIT)
        .await
        .expect("the good message still arrives");
    assert_eq!(
        (name.as_str(), ev["eventId"].as_str()),
        ("SpendUpdate", Some("good-1"))
    );

    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = format!("{}.dead", app.queue);
    let mut reasons = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..100 {
        if let Some(msg) = ch
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = msg
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let reason =
                herald_ingest::amqp::header_text(&headers, "x-herald-reason").unwrap_or_default();
            reasons.push(reason);
            bodies.push(String::from_utf8_lossy(&msg.delivery.data).to_string());
            if reasons.len() == 2 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        reasons.len(),
        2,
        "both bad messages dead-lettered: {reasons:?}"
    );
    assert!(
        bodies.contains(&"{not json".to_string()),
        "body unchanged: {bodies:?}"
    );
    assert!(bodies.iter().any(|b| b == &negative), "body unchanged");
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("negative")),
        "{reasons:?}"
    );
}

/// `POST /v1/events` of the same event id twice (docs/events.md, envelopes): the first
/// is `202` and delivered, the second `200` with `"duplicate": true` and a reason, delivered to
/// no one, and counted. A marker posted after the repeat arrives next: the repeat sent nothing.
#[tokio::test]
async fn a_repeated_event_id_over_http_is_answered_as_a_duplicate_and_delivered_once() {
    let app = spawn_app().await;
    let key = app.create_key(43, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/spend", &format!("access_token={key}")))
        .await
        .unwrap();
    let auth = format!("Bearer {MASTER_KEY}");
    let post = |id: &'static str, total: &'static str| {
        let auth = auth.clone();
        let addr = app.addr;
        async move {
            let body = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/billing","type":"SpendUpdated","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{{"keyId":43,"amount":1,"newTotalSpend":{total}}}}}"#
            );
            http(
                addr,
                "POST",
                "/v1/events",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/cloudevents+json"),
                ],
                &body,
            )
            .await
        }
    };

    let first = post("h-1", "1").await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.json()["duplicate"], false, "{}", first.body);
    let again = post("h-1", "1").await;
    assert_eq!(
        again.status, 200,
        "a repeat is not an error: {}",
        again.body
    );
    let body = again.json();
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(body["eventId"], "h-1", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already")),
        "the answer says why: {body}"
    );
    let marker = post("h-2", "2").await;
    assert_eq!(marker.status, 202, "{}", marker.body);

    let got: Vec<_> = [
        client.next_invocation(WAIT).await,
        client.next_invocation(WAIT).await,
    ]
    .into_iter()
    .map(|m| {
        let (name, ev) = m.expect("an event");
        format!("{name}:{}", ev["eventId"].as_str().unwrap_or("?"))
    })
    .collect();
    assert_eq!(
        got,
        ["SpendUpdate:h-1", "SpendUpdate:h-2"],
        "h-1 once, then the marker"
    );
    let metrics = herald_telemetry::metrics().render("n", "standalone");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("herald_duplicate_events_total{") && l.contains("source=\"http\""))
        .unwrap_or_default();
    let counted: f64 = line
        .rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0);
    assert!(counted >= 1.0, "counted: {line:?}");
}
