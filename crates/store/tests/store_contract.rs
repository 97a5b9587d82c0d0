#![allow(clippy::unwrap_used)]
//! The same contract, run against the in-memory store and a real PostgreSQL database (one fresh
//! database per test).
use chrono::{DateTime, Utc};
use herald_domain::budget::{SpendFacts, SpendObservation};
use herald_domain::forecast::RateConfig;
use herald_domain::thresholds::Thresholds;
use herald_domain::tls::ClientTls;
use herald_domain::{BudgetPeriod, EventId, KeyHash, KeyId, VirtualKey};
use herald_store::{MemoryStore, PostgresStore, SharedStore, SpendRules, Store, StoreError};
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;

/// The test command's run tag (`HERALD_TEST_RUN`, docs/testing.md) goes into every name this
/// test creates, so `scripts/test` can count and remove what its run left behind.
fn run_tag() -> String {
    std::env::var("HERALD_TEST_RUN")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect()
}

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh, migrated database; dropped when the guard goes.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("herald_store_{}{:016x}", run_tag(), rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls)
            .await
            .expect("postgres reachable");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        assert_eq!(
            herald_store::migrate(&url, &ClientTls::default())
                .await
                .expect("migrate"),
            vec![1, 2]
        );
        assert!(
            herald_store::migrate(&url, &ClientTls::default())
                .await
                .expect("migrate again")
                .is_empty(),
            "migrations are idempotent"
        );
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort; a leftover database does not affect other tests.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = c
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            }
        })
        .join()
        .ok();
    }
}

async fn stores() -> (Vec<(&'static str, SharedStore)>, TestDb) {
    let db = TestDb::new().await;
    let pg: SharedStore =
        Arc::new(PostgresStore::connect(&db.url, 8, &ClientTls::default()).expect("pool"));
    (
        vec![("memory", Arc::new(MemoryStore::new())), ("postgres", pg)],
        db,
    )
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn key(id: i64, raw: &str) -> VirtualKey {
    let mut k = VirtualKey::new(
        KeyId::new(id).unwrap(),
        KeyHash::of_raw(raw),
        format!("key {id}"),
    );
    k.budget = Some(d("100.00"));
    k
}

fn obs(key: i64, event: &str, spend: &str, at: &str) -> SpendObservation {
    SpendObservation {
        key_id: KeyId::new(key).unwrap(),
        event_id: EventId::parse(event).unwrap(),
        source_time: t(at),
        total_spend: d(spend),
        budget: d("100.00"),
        period: BudgetPeriod::Monthly,
        period_start: t("2026-11-01T00:00:00Z"),
        thresholds: Thresholds::default(),
    }
}

#[tokio::test]
async fn keys_round_trip_and_hashes_are_unique() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        let mut k = key(1, "condt_one");
        k.alert_thresholds = Some(Thresholds::from_list(vec![25, 80]).unwrap());
        k.expires_at = Some(t("2030-01-01T00:00:00Z"));
        s.put_key(&k).await.unwrap();
        let got = s
            .key_by_hash(&KeyHash::of_raw("condt_one"))
            .await
            .unwrap()
            .expect(name);
        assert_eq!(
            (
                got.id,
                got.budget,
                got.alert_thresholds.clone(),
                got.expires_at
            ),
            (k.id, k.budget, k.alert_thresholds.clone(), k.expires_at),
            "{name}"
        );
        assert_eq!(
            got.budget.unwrap().to_string(),
            "100.00",
            "{name}: scale kept"
        );
        assert!(
            s.key_by_hash(&KeyHash::of_raw("other"))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        let clash = key(2, "condt_one");
        assert!(
            matches!(s.put_key(&clash).await, Err(StoreError::Conflict(_))),
            "{name}: same hash, other id"
        );
        k.enabled = false;
        s.put_key(&k).await.unwrap();
        assert!(
            !s.key_by_id(k.id).await.unwrap().unwrap().enabled,
            "{name}: update in place"
        );
        assert!(s.delete_key(k.id).await.unwrap(), "{name}");
        assert!(!s.delete_key(k.id).await.unwrap(), "{name}");
        assert!(s.key_by_id(k.id).await.unwrap().is_none(), "{name}");
        s.ping().await.unwrap();
    }
}

#[tokio::test]
async fn spend_totals_never_go_back_in_time() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        s.put_key(&key(3, "condt_three")).await.unwrap();
        s.record_spend(
            KeyId::new(3).unwrap(),
            d("20.50"),
            t("2026-11-02T00:00:10Z"),
        )
        .await
        .unwrap();
        s.record_spend(KeyId::new(3).unwrap(), d("10"), t("2026-11-02T00:00:05Z"))
            .await
            .unwrap();
        let k = s.key_by_id(KeyId::new(3).unwrap()).await.unwrap().unwrap();
        assert_eq!(k.current_spend.to_string(), "20.50", "{name}");
    }
}

#[tokio::test]
async fn an_alert_stays_pending_until_published_and_fires_once() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        let o = obs(4, "spend-1", "60", "2026-11-02T00:00:00Z");
        let first = s.evaluate_budget(&o).await.unwrap();
        assert_eq!(first.len(), 1, "{name}");
        let alert = &first[0].event;
        assert_eq!(alert.name.name(), "BudgetAlert");
        assert!(
            alert
                .payload
                .get()
                .contains(r#""alertType":"budget_50_percent""#),
            "{name}: {}",
            alert.payload.get()
        );
        assert!(
            alert.payload.get().contains(r#""budget":100.00"#),
            "{name}: exact digits survive the store"
        );
        // Redelivery before the publish was confirmed: the same alert comes back, nothing new.
        let again = s.evaluate_budget(&o).await.unwrap();
        assert_eq!(
            again
                .iter()
                .map(|a| a.event.event_id.clone())
                .collect::<Vec<_>>(),
            vec![alert.event_id.clone()],
            "{name}"
        );
        s.mark_alert_published(&alert.event_id).await.unwrap();
        assert!(
            s.evaluate_budget(&o).await.unwrap().is_empty(),
            "{name}: redelivery after publish"
        );
        // A jump to 95%: one alert, for 90.
        let jump = s
            .evaluate_budget(&obs(4, "spend-2", "95", "2026-11-02T00:01:00Z"))
            .await
            .unwrap();
        assert_eq!(jump.len(), 1, "{name}");
        assert!(
            jump[0].event.payload.get().contains(r#""threshold":90"#),
            "{name}"
        );
    }
}

#[tokio::test]
async fn racing_consumers_fire_each_threshold_once() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = s.clone();
            // Different events with rising totals, evaluated concurrently.
            let spend = format!("{}", 40 + i * 4);
            tasks.push(tokio::spawn(async move {
                s.evaluate_budget(&obs(
                    5,
                    &format!("race-{i}"),
                    &spend,
                    &format!("2026-11-02T00:00:{:02}Z", i),
                ))
                .await
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            for a in t.await.unwrap().unwrap() {
                ids.insert(a.event.event_id.to_string());
            }
        }
        // Whatever the interleaving, no threshold has two alerts of the same generation and
        // none fires twice: ids are (key, period, threshold, generation).
        let per_threshold: Vec<String> = ids
            .iter()
            .map(|id| id.rsplit(':').nth(1).unwrap_or("").to_string())
            .collect();
        let distinct: std::collections::BTreeSet<_> = per_threshold.iter().collect();
        assert_eq!(distinct.len(), per_threshold.len(), "{name}: {ids:?}");
        assert!(
            ids.iter().all(|id| id.ends_with(":1")),
            "{name}: every alert is generation 1: {ids:?}"
        );
        assert!(!ids.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn a_new_period_rearms() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        let nov = obs(6, "nov", "60", "2026-11-02T00:00:00Z");
        let a = s.evaluate_budget(&nov).await.unwrap();
        s.mark_alert_published(&a[0].event.event_id).await.unwrap();
        let mut dec = obs(6, "dec", "60", "2026-12-02T00:00:00Z");
        dec.period_start = t("2026-12-01T00:00:00Z");
        let b = s.evaluate_budget(&dec).await.unwrap();
        assert_eq!(b.len(), 1, "{name}");
        assert_ne!(a[0].event.event_id, b[0].event.event_id, "{name}");
    }
}

#[tokio::test]
async fn unreachable_database_is_unavailable_not_a_panic() {
    let s = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/none",
        1,
        &ClientTls::default(),
    )
    .unwrap();
    assert!(matches!(s.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        PostgresStore::connect("not a url", 1, &ClientTls::default()),
        Err(StoreError::Unavailable(_))
    ));
}

/// Concurrent calls for many keys (key lookups share batches in PostgreSQL) each get the
/// answer for their own key, and two totals of one key in flight together leave the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_for_many_keys_each_get_their_own_answer() {
    let (stores, _db) = stores().await;
    for (name, s) in stores {
        for id in 100..300 {
            s.put_key(&key(id, &format!("condt_many_{id}")))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for id in 100..300i64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let k = KeyId::new(id).unwrap();
                let (newer, older) = tokio::join!(
                    s.record_spend(k, d(&format!("{id}.75")), t("2026-11-02T00:00:10Z")),
                    s.record_spend(k, d("1"), t("2026-11-02T00:00:05Z")),
                );
                newer.unwrap();
                older.unwrap();
                let alerts = s
                    .evaluate_budget(&obs(
                        id,
                        &format!("many-{id}"),
                        "60",
                        "2026-11-02T00:00:10Z",
                    ))
                    .await
                    .unwrap();
                let stored = s.key_by_id(k).await.unwrap().unwrap();
                (id, alerts, stored)
            }));
        }
        for task in tasks {
            let (id, alerts, stored) = task.await.unwrap();
            assert_eq!(stored.id.get(), id, "{name}");
            assert_eq!(
                stored.current_spend,
                d(&format!("{id}.75")),
                "{name}: key {id}"
            );
            assert_eq!(alerts.len(), 1, "{name}: key {id}: {alerts:?}");
            assert_eq!(
                alerts[0].event.key_id,
                Some(KeyId::new(id).unwrap()),
                "{name}"
            );
        }
        assert!(
            s.key_by_id(KeyId::new(999).unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
}

fn facts(key: i64, event: &str, total: &str, budget: Option<&str>) -> SpendFacts {
    SpendFacts {
        key_id: KeyId::new(key).unwrap(),
        event_id: EventId::parse(event).unwrap(),
        source_time: t("2026-11-02T00:00:00Z"),
        total_spend: d(total),
        budget: budget.map(d),
        period: None,
        period_start: None,
        amount: d("0.5"),
        model: Some("gpt-4o".into()),
        provider: None,
        request_id: None,
    }
}

/// The node's rules with spend intelligence on (its default).
fn rules() -> SpendRules {
    SpendRules {
        thresholds: Thresholds::default(),
        rates: Some(RateConfig::default()),
    }
}

/// `observe_spend` (one transaction per batch in PostgreSQL) does what the three steps do:
/// the key as stored, its total recorded, its budget evaluated — for many keys at once, keys
/// without a budget, and keys the store does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observing_spends_looks_up_records_and_evaluates_in_one_call() {
    let (stores, _db) = stores().await;
    let defaults = rules();
    for (name, s) in stores {
        for id in 400..500 {
            let mut k = key(id, &format!("condt_observe_{id}"));
            if id % 2 == 1 {
                k.budget = None;
            }
            s.put_key(&k).await.unwrap();
        }
        let mut tasks = Vec::new();
        for id in 400..520i64 {
            let (s, defaults) = (s.clone(), defaults.clone());
            tasks.push(tokio::spawn(async move {
                // Keys 500.. are unknown; 510.. bring their own budget.
                let budget = (id >= 510).then_some("10");
                let out = s
                    .observe_spend(&facts(id, &format!("obs-{id}"), "7.5", budget), &defaults)
                    .await
                    .unwrap();
                (id, out)
            }));
        }
        for task in tasks {
            let (id, out) = task.await.unwrap();
            let alerts = out.pending.len();
            match id {
                400..500 => {
                    assert_eq!(out.key.as_ref().map(|k| k.id.get()), Some(id), "{name}");
                    let stored = s.key_by_id(KeyId::new(id).unwrap()).await.unwrap().unwrap();
                    assert_eq!(stored.current_spend, d("7.5"), "{name}: key {id}");
                    // 7.5 of 100 crosses nothing; odd keys have no budget at all.
                    assert_eq!(alerts, 0, "{name}: key {id}");
                }
                500..510 => {
                    assert!(out.key.is_none(), "{name}");
                    assert_eq!(alerts, 0, "{name}: unknown key, no budget");
                }
                _ => {
                    // 7.5 of the event's 10 crosses 50 and 75: one alert (75), 50 marked.
                    assert!(out.key.is_none(), "{name}");
                    assert_eq!(alerts, 1, "{name}: key {id}: {:?}", out.pending);
                    assert!(
                        out.pending[0]
                            .event
                            .payload
                            .get()
                            .contains(r#""threshold":75"#),
                        "{name}"
                    );
                }
            }
        }
        // Crossing a key's own budget through the same call.
        let out = s
            .observe_spend(&facts(400, "obs-400-b", "95", None), &defaults)
            .await
            .unwrap();
        assert_eq!(out.pending.len(), 1, "{name}: 95 of 100 fires 90");
        // Key 510's 75% alert was never published: it comes first, then the 90% this fires.
        let out = s
            .observe_spend(&facts(510, "obs-510-b", "9.5", Some("10")), &defaults)
            .await
            .unwrap();
        let thresholds: Vec<bool> = ["75", "90"]
            .iter()
            .zip(&out.pending)
            .map(|(t, a)| {
                a.event
                    .payload
                    .get()
                    .contains(&format!(r#""threshold":{t}"#))
            })
            .collect();
        assert_eq!(out.pending.len(), 2, "{name}: {:?}", out.pending);
        assert_eq!(thresholds, [true, true], "{name}: {:?}", out.pending);
    }
}

/// The burn rate, the spend summary and the transactions survive in the store: a repeated
/// event adds nothing, a late one changes no rate, and the summary lists the period's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burn_rates_and_the_summary_count_each_event_once() {
    let (stores, _db) = stores().await;
    let rules = rules();
    for (name, s) in stores {
        let mut k = key(600, "condt_rates_600");
        k.budget = Some(d("100"));
        k.budget_period = BudgetPeriod::Daily;
        s.put_key(&k).await.unwrap();
        let at = |minute: i64| t("2026-11-02T00:00:00Z") + chrono::Duration::minutes(minute);
        let spend = |i: i64, model: &str| SpendFacts {
            key_id: KeyId::new(600).unwrap(),
            event_id: EventId::parse(&format!("rate-{i}")).unwrap(),
            source_time: at(i),
            total_spend: Decimal::from(i + 1),
            budget: None,
            period: None,
            period_start: None,
            amount: Decimal::ONE,
            model: Some(model.to_owned()),
            provider: Some("openai".into()),
            request_id: None,
        };
        let mut last = None;
        for i in 0..10 {
            let out = s
                .observe_spend(&spend(i, if i % 2 == 0 { "a" } else { "b" }), &rules)
                .await
                .unwrap();
            last = out.rate;
        }
        let rate = last.expect("a rate on every spend").burn_rate_per_hour;
        // One per minute: 60 per hour, and the forecast fires (100 at 60/h runs out at ~01:40).
        assert!(rate > d("50") && rate < d("70"), "{name}: {rate}");
        let again = s.observe_spend(&spend(9, "b"), &rules).await.unwrap();
        assert_eq!(
            again.rate.map(|r| r.burn_rate_per_hour),
            Some(rate),
            "{name}: a repeat changes nothing"
        );
        let forecasts: Vec<_> = again
            .pending
            .iter()
            .filter(|p| p.label == "forecast")
            .collect();
        assert_eq!(forecasts.len(), 1, "{name}: {:?}", again.pending);
        let late = s.observe_spend(&spend(3, "a"), &rules).await.unwrap();
        assert_eq!(
            late.rate.map(|r| r.burn_rate_per_hour),
            Some(rate),
            "{name}: a late event changes nothing"
        );
        let summary = s
            .spend_summary(KeyId::new(600).unwrap(), 3)
            .await
            .unwrap()
            .expect("a summary");
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["periodSpend"], serde_json::json!(10), "{name}: {json}");
        assert_eq!(
            json["byModel"][0]["requests"],
            serde_json::json!(5),
            "{name}"
        );
        assert_eq!(
            json["byProvider"][0]["spend"],
            serde_json::json!(10),
            "{name}"
        );
        let recent: Vec<&str> = json["recent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["eventId"].as_str().unwrap())
            .collect();
        assert_eq!(recent, ["rate-9", "rate-8", "rate-7"], "{name}");
        assert_eq!(json["periodStart"], "2026-11-02T00:00:00Z", "{name}");
        assert_eq!(json["forecast"]["exceedsBudget"], true, "{name}: {json}");
        assert!(
            s.spend_summary(KeyId::new(601).unwrap(), 3)
                .await
                .unwrap()
                .is_none(),
            "{name}: an unknown key with no spend"
        );
    }
}
