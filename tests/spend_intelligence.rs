#![allow(clippy::unwrap_used)]
//! Spend intelligence on the real services (docs/events.md, "Spend intelligence"): synthetic
//! spend curves — steady, accelerating, a spike, a pause, a budget raise, a new period — go
//! through RabbitMQ to two `herald consume` processes sharing PostgreSQL and Redis; one is
//! killed (SIGKILL) and restarted in the middle, some messages are published twice. A
//! `herald serve` node's admin hub must see exactly the expected forecast and spike alerts,
//! each once, the trends on SpendUpdate, and `GetSpendSummary` the period from the store.
mod common;

use common::process::{Herald, publish_mt, real_env};
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// One SpendUpdated of a curve.
#[derive(Clone)]
struct Spend {
    id: String,
    key: i64,
    /// Minutes after 2026-03-10T00:00:00Z (source time).
    minute: f64,
    cents: u64,
    total_cents: u64,
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn time(minute: f64) -> String {
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-10T00:00:00Z").unwrap();
    let t = start + chrono::Duration::milliseconds((minute * 60_000.0).round() as i64);
    t.to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn envelope(s: &Spend) -> String {
    let model = if s.total_cents.is_multiple_of(2) {
        "m-even"
    } else {
        "m-odd"
    };
    format!(
        r#"{{"messageId":"{}","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],"message":{{"KeyId":{},"Amount":{},"NewTotalSpend":{},"Model":"{model}","Provider":"p"}},"sentTime":"{}"}}"#,
        s.id,
        s.key,
        money(s.cents),
        money(s.total_cents),
        time(s.minute)
    )
}

/// Builds curves with running totals per key.
#[derive(Default)]
struct Curves {
    totals: BTreeMap<i64, u64>,
}

impl Curves {
    /// `n` events of key `key`, `every` minutes apart from `from`, `cents` each.
    fn run(
        &mut self,
        key: i64,
        name: &str,
        from: f64,
        every: f64,
        n: u32,
        cents: u64,
    ) -> Vec<Spend> {
        (0..n)
            .map(|i| {
                let total = self.totals.entry(key).or_default();
                *total += cents;
                Spend {
                    id: format!("k{key}-{name}-{i}"),
                    key,
                    minute: from + every * f64::from(i),
                    cents,
                    total_cents: *total,
                }
            })
            .collect()
    }
}

async fn post_key(node: &Herald, body: Value) {
    let auth = format!("Bearer {MASTER_KEY}");
    let r = http(
        node.internal(),
        "POST",
        "/v1/keys",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// What the admin hub delivered.
#[derive(Default)]
struct Seen {
    updates: BTreeMap<String, Value>,
    alerts: Vec<String>,
    other: HashSet<String>,
}

/// Reads the admin hub until every id of `wanted` (SpendUpdate or other event ids) arrived,
/// recording every BudgetAlert on the way.
async fn collect(admin: &mut SignalR, seen: &mut Seen, wanted: &[String], deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let missing = wanted
            .iter()
            .filter(|w| !seen.updates.contains_key(*w) && !seen.other.contains(*w))
            .count();
        if missing == 0 {
            return;
        }
        let left = end.saturating_duration_since(Instant::now());
        let Some((name, arg)) = admin
            .next_invocation(left.min(Duration::from_secs(30)))
            .await
        else {
            panic!(
                "{missing} events did not arrive (seen {} updates, alerts {:?})",
                seen.updates.len(),
                seen.alerts
            );
        };
        let id = arg["eventId"].as_str().unwrap_or_default().to_owned();
        match name.as_str() {
            "SpendUpdate" => {
                seen.updates.insert(id, arg);
            }
            "BudgetAlert" => seen.alerts.push(id),
            _ => {
                seen.other.insert(id);
            }
        }
    }
}

async fn publish(ns: &str, spends: &[Spend]) {
    let exchange = format!("{ns}:SpendUpdated");
    let messages: Vec<_> = spends
        .iter()
        .map(|s| {
            (
                exchange.clone(),
                lapin::ExchangeKind::Fanout,
                String::new(),
                envelope(s).into_bytes(),
                "application/vnd.masstransit+json",
            )
        })
        .collect();
    amqp_publish_many(&messages).await;
}

async fn key_update(ns: &str, id: &str, key: i64, budget: &str) {
    let body = format!(
        r#"{{"messageId":"{id}","messageType":["urn:message:ConduitLLM.Core.Events:VirtualKeyUpdated"],"message":{{"KeyId":{key},"Budget":{budget},"ChangedProperties":["Budget"]}},"sentTime":"2026-03-10T12:00:00Z"}}"#
    );
    publish_mt(&format!("{ns}:VirtualKeyUpdated"), &body, &[]).await;
}

fn ids(spends: &[Spend]) -> Vec<String> {
    spends.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curves_fire_exactly_the_expected_forecast_and_spike_alerts_once_across_two_consumers_and_a_restart()
 {
    let env = real_env("intel").await;
    let mut vars = env.vars.clone();
    // Small prefetch: the two consumers interleave, so one key's events are processed by both.
    vars.push(("HERALD_AMQP_PREFETCH", "8".to_owned()));
    let serve = Herald::start(&["serve"], &vars);
    serve.wait_ready().await;
    let mut c1 = Herald::start(&["consume"], &vars);
    let c2 = Herald::start(&["consume"], &vars);
    c1.wait_ready().await;
    c2.wait_ready().await;

    // Daily budgets of 100: totals stay under 50, so no threshold alert mixes in.
    for id in [101, 102, 104, 105, 106] {
        post_key(
            &serve,
            json!({"id": id, "budget": 100, "budgetPeriod": "daily"}),
        )
        .await;
    }
    post_key(&serve, json!({"id": 103, "spikeAlerts": true})).await;
    // A key that may read its own summary.
    let auth = format!("Bearer {MASTER_KEY}");
    let r = http(
        serve.internal(),
        "POST",
        "/v1/keys",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"id":107,"budget":100,"budgetPeriod":"daily"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let raw107 = r.json()["key"].as_str().unwrap().to_owned();

    let mut admin = SignalR::connect(&format!(
        "ws://{}/hubs/admin?access_token={MASTER_KEY}",
        serve.addr
    ))
    .await
    .unwrap();
    let mut seen = Seen::default();
    let mut c = Curves::default();

    // Phase 1.
    let steady_a = c.run(101, "steady", 0.0, 1.0, 90, 5); // 3 per hour
    let accel_slow = c.run(102, "slow", 0.0, 6.0, 20, 20); // 2 per hour
    let accel_fast_a = c.run(102, "fast", 120.0, 1.0, 20, 50); // 30 per hour
    let spike_base = c.run(103, "base", 0.0, 1.0, 120, 5);
    let spike = c.run(103, "spike", 120.0, 0.25, 40, 50); // 120 per hour for 10 minutes
    let pause_fast = c.run(104, "fast", 0.0, 1.0, 30, 50);
    let pause_trickle = c.run(104, "trickle", 210.0, 10.0, 6, 1);
    let raise_a = c.run(105, "a", 0.0, 1.0, 30, 50);
    let day1 = c.run(106, "day1", 60.0, 1.0, 30, 50);
    let summary107 = c.run(107, "s", 0.0, 1.0, 12, 1); // 0.6 per hour: no forecast
    let phase1: Vec<Spend> = [
        &steady_a,
        &accel_slow,
        &accel_fast_a,
        &spike_base,
        &spike,
        &pause_fast,
        &pause_trickle,
        &raise_a,
        &day1,
        &summary107,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    publish(&env.ns, &phase1).await;
    // Kill consumer 1 in the middle of the phase (unacked messages go to the other or to its
    // successor) and start it again.
    let some: Vec<String> = ids(&phase1).into_iter().take(40).collect();
    collect(&mut admin, &mut seen, &some, Duration::from_secs(120)).await;
    drop(c1);
    c1 = Herald::start(&["consume"], &vars);
    c1.wait_ready().await;
    collect(
        &mut admin,
        &mut seen,
        &ids(&phase1),
        Duration::from_secs(180),
    )
    .await;

    // The budget of 105 is raised: its forecast re-arms on its next events.
    key_update(&env.ns, "ku-105-raise", 105, "10000").await;
    collect(
        &mut admin,
        &mut seen,
        &["ku-105-raise".to_owned()],
        Duration::from_secs(60),
    )
    .await;

    // Phase 2, with some of phase 1 published again (redeliveries).
    let steady_b = c.run(101, "steady-b", 90.0, 1.0, 90, 5);
    let accel_fast_b = c.run(102, "fast-b", 140.0, 1.0, 40, 50);
    let spike_calm = c.run(103, "calm", 130.0, 1.0, 60, 5);
    let pause_burst = c.run(104, "burst", 270.0, 1.0, 40, 60);
    let raise_b = c.run(105, "b", 30.0, 1.0, 30, 50);
    // The next day (a new daily period): its running total keeps growing.
    let day2 = c.run(106, "day2", 24.0 * 60.0 + 60.0, 1.0, 30, 50);
    let mut phase2: Vec<Spend> = [
        &steady_b,
        &accel_fast_b,
        &spike_calm,
        &pause_burst,
        &raise_b,
        &day2,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    phase2.extend(phase1.iter().step_by(17).cloned());
    publish(&env.ns, &phase2).await;
    let fresh: Vec<String> = ids(&phase2)
        .into_iter()
        .filter(|i| !seen.updates.contains_key(i))
        .collect();
    collect(&mut admin, &mut seen, &fresh, Duration::from_secs(180)).await;

    // The budget goes back to 100: the re-armed forecast fires again, as generation 2.
    key_update(&env.ns, "ku-105-lower", 105, "100").await;
    collect(
        &mut admin,
        &mut seen,
        &["ku-105-lower".to_owned()],
        Duration::from_secs(60),
    )
    .await;
    let raise_c = c.run(105, "c", 60.0, 1.0, 10, 50);
    publish(&env.ns, &raise_c).await;
    collect(
        &mut admin,
        &mut seen,
        &ids(&raise_c),
        Duration::from_secs(60),
    )
    .await;

    // Anything still on its way (a repeat would come now) has a moment to arrive.
    while let Some((name, arg)) = admin.next_invocation(Duration::from_secs(2)).await {
        if name == "BudgetAlert" {
            seen.alerts
                .push(arg["eventId"].as_str().unwrap_or_default().to_owned());
        }
    }
    let mut alerts = seen.alerts.clone();
    alerts.sort();
    assert_eq!(
        alerts,
        [
            "budget-forecast:102:2026-03-10T00:00:00Z:1",
            "budget-forecast:104:2026-03-10T00:00:00Z:1",
            "budget-forecast:104:2026-03-10T00:00:00Z:2",
            "budget-forecast:105:2026-03-10T00:00:00Z:1",
            "budget-forecast:105:2026-03-10T00:00:00Z:2",
            "budget-forecast:106:2026-03-10T00:00:00Z:1",
            "budget-forecast:106:2026-03-11T00:00:00Z:1",
            // Key 103 has no budget period: its period is the key's whole life.
            "spend-spike:103:1970-01-01T00:00:00Z:1",
        ],
        "each expected alert exactly once, and no other"
    );

    // Trends on the last SpendUpdate of each phase's curves.
    let trend = |id: &str| seen.updates[id]["trend"].as_str().unwrap().to_owned();
    assert_eq!(trend(&steady_b.last().unwrap().id), "stable");
    assert_eq!(trend(&accel_fast_b.last().unwrap().id), "up");
    assert_eq!(trend(&pause_trickle.last().unwrap().id), "down");
    let rate: f64 = seen.updates[&steady_b.last().unwrap().id]["burnRatePerHour"]
        .as_f64()
        .unwrap();
    assert!((rate - 3.0).abs() < 0.3, "steady 3 per hour read as {rate}");

    // The same alerts, once each, in the durable record.
    let db = env
        .vars
        .iter()
        .find(|(k, _)| *k == "HERALD_DATABASE_URL")
        .unwrap()
        .1
        .clone();
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT alert_id FROM budget_alerts WHERE published_at IS NOT NULL ORDER BY alert_id",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, alerts);

    // GetSpendSummary: the key's own on /hubs/spend, any key's on /hubs/admin.
    let mut own = SignalR::connect(&format!(
        "ws://{}/hubs/spend?access_token={raw107}",
        serve.addr
    ))
    .await
    .unwrap();
    let done = own.invoke("GetSpendSummary", json!([])).await;
    let s = &done["result"];
    assert_eq!(s["virtualKeyId"], 107, "{done}");
    assert_eq!(s["periodSpend"], json!(0.12), "{s}");
    assert_eq!(s["totalSpend"], json!(0.12), "{s}");
    assert_eq!(s["periodStart"], "2026-03-10T00:00:00Z");
    let requests: u64 = s["byModel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 12, "{s}");
    assert_eq!(s["recent"][0]["eventId"], "k107-s-11", "{s}");
    assert_eq!(s["recent"].as_array().unwrap().len(), 12);
    let mut events = SignalR::connect(&format!(
        "ws://{}/hubs/events?access_token={raw107}",
        serve.addr
    ))
    .await
    .unwrap();
    let same = events.invoke("GetSpendSummary", json!([])).await;
    assert_eq!(
        same["result"], done["result"],
        "/hubs/events answers the same"
    );
    let refused = own.invoke("GetSpendSummary", json!([106])).await;
    assert_eq!(refused["error"], "GetSpendSummary expects no arguments.");
    let done = admin.invoke("GetSpendSummary", json!([106])).await;
    let s = &done["result"];
    assert_eq!(s["periodStart"], "2026-03-11T00:00:00Z", "{done}");
    // Sums keep the inputs' digits.
    assert_eq!(s["periodSpend"].to_string(), "15.00", "{s}");
    assert_eq!(s["forecast"]["exceedsBudget"], true, "{s}");
    let unknown = admin.invoke("GetSpendSummary", json!([999])).await;
    assert_eq!(unknown["result"], Value::Null, "{unknown}");
    drop((c1, c2, serve));
}
