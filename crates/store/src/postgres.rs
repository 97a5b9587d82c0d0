//! PostgreSQL store. Budget evaluation runs under per-key advisory locks, and the unique keys
//! of `budget_alerts` make firing exactly-once even if two consumers race past the lock (e.g.
//! after a failover).
//!
//! The consumer's hot path — the key lookup, spend total and budget evaluation of a
//! SpendUpdated, one `observe_spend` call — is group-committed: concurrent calls share one
//! transaction per batch, so the consumer's rate is not bounded by round trips per message.
//! Key lookups by id are batched the same way. Statements are prepared once per connection.
//!
//! Long because: one purpose, the SQL of every `Store` method against PostgreSQL with the
//! group commit that batches it; the statements and their batching share the row mappings.
use crate::contract::{PendingAlert, SpendOutcome, SpendRules, Store, StoreError};
use crate::rates::{self, RateJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use herald_domain::budget::{self, Change, SpendFacts, SpendObservation, ThresholdState};
use herald_domain::forecast::{RateInput, RateView};
use herald_domain::summary::SpendSummary;
use herald_domain::thresholds::Thresholds;
use herald_domain::tls::ClientTls;
use herald_domain::{BudgetPeriod, Cause, EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// The migrations, in order. `herald migrate` and `HERALD_MIGRATE=true` apply them.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        include_str!("../../../migrations/0002_spend_intelligence.sql"),
    ),
];

/// Lock id namespace for `pg_advisory_xact_lock(namespace, key)`.
const BUDGET_LOCK: i32 = 0x4845_5241; // "HERA"
const MIGRATION_LOCK: i64 = 0x4845_5241_4c44; // "HERALD"

/// Calls collected into one statement or transaction at most.
const BATCH: usize = 256;
/// Batches of one kind in flight at once. One: requests queue up while a batch runs, so the
/// next batch is larger; a drain used ~15% less CPU per message than with two.
const BATCH_WORKERS: usize = 1;

/// A spend total to record: `record_spend`'s arguments.
#[derive(Debug, Clone)]
struct Spend {
    id: KeyId,
    total: Decimal,
    at: DateTime<Utc>,
}

type Batcher<Req, Resp> = herald_coalesce::Coalescer<Req, Resp, StoreError>;

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    keys: Batcher<KeyId, Option<VirtualKey>>,
    observed: Batcher<(SpendFacts, SpendRules), SpendOutcome>,
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Cause::new(e))
}

/// `tls` applies when the URL's `sslmode` asks for TLS (crate::tls).
fn pool(url: &str, max_size: usize, tls: &ClientTls) -> Result<Pool, StoreError> {
    let invalid =
        |e: String| StoreError::Unavailable(Cause::from(format!("invalid database URL: {e}")));
    let (config, mode) = crate::tls::parse(url).map_err(invalid)?;
    let manager_config = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match crate::tls::connector(mode, tls)
        .map_err(|e| StoreError::Unavailable(Cause::from(format!("database TLS: {e}"))))?
    {
        None => Manager::from_config(config, NoTls, manager_config()),
        Some(rustls) => Manager::from_config(config, rustls, manager_config()),
    };
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(unavailable)
}

/// Applies every migration not yet applied, under an advisory lock so concurrent start-ups
/// don't race.
pub async fn migrate(url: &str, tls: &ClientTls) -> Result<Vec<i32>, StoreError> {
    let pool = pool(url, 1, tls)?;
    let mut client = pool.get().await.map_err(unavailable)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(unavailable)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(unavailable)?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM herald_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(unavailable)?
            .is_some();
        if !done {
            tx.batch_execute(sql).await.map_err(|e| {
                StoreError::Unavailable(Cause::context(format!("migration {version}"), e))
            })?;
            tx.execute(
                "INSERT INTO herald_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(unavailable)?;
            applied.push(*version);
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(applied)
}

impl PostgresStore {
    /// A pool of up to `max_connections`; connections are made lazily, so this succeeds while
    /// the database is down (readiness reports it).
    ///
    /// Must be called inside a Tokio runtime: the batching workers are spawned on it.
    pub fn connect(url: &str, max_connections: usize, tls: &ClientTls) -> Result<Self, StoreError> {
        let pool = pool(url, max_connections, tls)?;
        let p = pool.clone();
        let keys = Batcher::spawn(BATCH_WORKERS, BATCH, move |ids| {
            let p = p.clone();
            async move { keys_by_id(&client(&p).await?, &ids).await }
        });
        let p = pool.clone();
        let observed = Batcher::spawn(BATCH_WORKERS, BATCH, move |spends| {
            let p = p.clone();
            async move { observe_spends(&p, &spends).await }
        });
        Ok(Self {
            pool,
            keys,
            observed,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        client(&self.pool).await
    }
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(unavailable)
}

/// A batch call's answer, or why it has none.
fn batched<T>(
    answer: Result<Result<T, StoreError>, herald_coalesce::NoAnswer>,
) -> Result<T, StoreError> {
    answer.map_err(|_| StoreError::Unavailable(Cause::from("the store's batch worker stopped")))?
}

fn keys_sql() -> String {
    format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE id = ANY($1)")
}

/// `v.id = ANY($1)` is the index condition: joined to `unnest` alone, the generic plan scanned
/// the whole table once per batch.
const RECORD_SPENDS: &str =
    "UPDATE virtual_keys v SET current_spend = u.total, spend_at = u.at, updated_at = now()
     FROM unnest($1::int8[], $2::numeric[], $3::timestamptz[]) AS u(id, total, at)
     WHERE v.id = ANY($1) AND v.id = u.id AND (v.spend_at IS NULL OR v.spend_at <= u.at)";

/// The keys with these ids, in the order asked.
async fn keys_by_id(
    c: &impl GenericClient,
    ids: &[KeyId],
) -> Result<Vec<Option<VirtualKey>>, StoreError> {
    let stmt = c.prepare_cached(&keys_sql()).await.map_err(unavailable)?;
    let wanted: Vec<i64> = ids.iter().map(|k| k.get()).collect();
    let rows = c.query(&stmt, &[&wanted]).await.map_err(unavailable)?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let key = key_from_row(row)?;
        found.insert(key.id, key);
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// Records each spend total unless a newer one is stored; within the batch, per key, the
/// newest by source time wins (the latest of equals), as if they had been recorded in order.
async fn record_spends(c: &impl GenericClient, spends: &[Spend]) -> Result<Vec<()>, StoreError> {
    let mut newest: Vec<&Spend> = Vec::with_capacity(spends.len());
    for s in spends {
        match newest.iter_mut().find(|n| n.id == s.id) {
            Some(n) if n.at <= s.at => *n = s,
            Some(_) => {}
            None => newest.push(s),
        }
    }
    let ids: Vec<i64> = newest.iter().map(|s| s.id.get()).collect();
    let totals: Vec<Decimal> = newest.iter().map(|s| s.total).collect();
    let ats: Vec<DateTime<Utc>> = newest.iter().map(|s| s.at).collect();
    let stmt = c.prepare_cached(RECORD_SPENDS).await.map_err(unavailable)?;
    c.execute(&stmt, &[&ids, &totals, &ats])
        .await
        .map_err(unavailable)?;
    Ok(vec![(); spends.len()])
}

/// `observe_spend` for a batch, in one transaction: the keys read, the totals recorded, then
/// the budgets and burn rates evaluated (`evaluate_in`).
async fn observe_spends(
    pool: &Pool,
    spends: &[(SpendFacts, SpendRules)],
) -> Result<Vec<SpendOutcome>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(unavailable)?;
    let ids: Vec<KeyId> = spends.iter().map(|(f, _)| f.key_id).collect();
    let totals: Vec<Spend> = spends
        .iter()
        .map(|(f, _)| Spend {
            id: f.key_id,
            total: f.total_spend,
            at: f.source_time,
        })
        .collect();
    // Polled together, the two statements go out in one round trip and run in this order: the
    // keys are read as they were before the batch's totals. Prepared first, so that on a fresh
    // connection neither waits on its `Parse` while the other is sent.
    tx.prepare_cached(&keys_sql()).await.map_err(unavailable)?;
    tx.prepare_cached(RECORD_SPENDS)
        .await
        .map_err(unavailable)?;
    let (keys, _) = tokio::try_join!(keys_by_id(&tx, &ids), record_spends(&tx, &totals))?;
    // Which spends have a budget to evaluate, and their place in the batch.
    let (places, observations): (Vec<usize>, Vec<SpendObservation>) = spends
        .iter()
        .zip(&keys)
        .enumerate()
        .filter_map(|(i, ((facts, rules), key))| {
            facts
                .observation(key.as_ref(), &rules.thresholds)
                .map(|o| (i, o))
        })
        .unzip();
    // Which spends feed a burn rate (all of them unless HERALD_SPEND_FORECAST=off).
    let jobs: Vec<RateJob> = spends
        .iter()
        .zip(&keys)
        .enumerate()
        .filter_map(|(i, ((facts, rules), key))| {
            rules.rates.map(|cfg| RateJob {
                place: i,
                input: RateInput::of(facts, key.as_ref()),
                cfg,
                facts,
            })
        })
        .collect();
    let mut pending = vec![Vec::new(); spends.len()];
    let mut views: Vec<Option<RateView>> = vec![None; spends.len()];
    if !observations.is_empty() || !jobs.is_empty() {
        let (by_key, rated) = evaluate_in(&tx, &observations, &jobs).await?;
        let touched = places.iter().copied().chain(jobs.iter().map(|j| j.place));
        for place in touched {
            pending[place] = by_key
                .get(&spends[place].0.key_id.get())
                .cloned()
                .unwrap_or_default();
        }
        for (job, view) in jobs.iter().zip(rated) {
            views[job.place] = Some(view);
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(keys
        .into_iter()
        .zip(pending)
        .zip(views)
        .map(|((key, pending), rate)| SpendOutcome { key, pending, rate })
        .collect())
}

/// A statement's parameters.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn lock_key(key: KeyId) -> i32 {
    i32::try_from(key.get().rem_euclid(i64::from(i32::MAX))).unwrap_or(0)
}

/// The alerts still to publish, by key.
type PendingByKey = std::collections::HashMap<i64, Vec<PendingAlert>>;

/// Evaluates a batch of observations and burn rate jobs inside the caller's transaction: the
/// keys' advisory locks are taken in ascending order (so batches of concurrent consumers cannot
/// deadlock), the state of every period involved is read at once, the pure rules run for each
/// in batch order (a later observation of a key sees what an earlier one changed), the changes
/// are written, and every alert of the keys still to be published comes back, by key, with
/// each job's rate view.
async fn evaluate_in(
    tx: &deadpool_postgres::Transaction<'_>,
    observations: &[SpendObservation],
    jobs: &[RateJob<'_>],
) -> Result<(PendingByKey, Vec<RateView>), StoreError> {
    let mut all: Vec<i64> = observations
        .iter()
        .map(|o| o.key_id.get())
        .chain(jobs.iter().map(|j| j.input.key_id.get()))
        .collect();
    all.sort_unstable();
    all.dedup();
    let mut locks: Vec<i32> = all
        .iter()
        .filter_map(|k| KeyId::new(*k).ok())
        .map(lock_key)
        .collect();
    locks.sort_unstable();
    locks.dedup();
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
        .await
        .map_err(unavailable)?;

    let keys: Vec<i64> = observations.iter().map(|o| o.key_id.get()).collect();
    let starts: Vec<DateTime<Utc>> = observations.iter().map(|o| o.period_start).collect();
    // `s.key_id = ANY($1)` for the same reason as in `RECORD_SPENDS`: an index scan, not a
    // scan of every key's state per batch.
    let read = tx
        .prepare_cached(
            "SELECT s.key_id, s.period_start, s.threshold, s.generation, s.armed, s.source_time, s.budget
             FROM budget_alert_state s
             JOIN (SELECT DISTINCT * FROM unnest($1::int8[], $2::timestamptz[])) AS p(key_id, period_start)
               ON s.key_id = p.key_id AND s.period_start = p.period_start
             WHERE s.key_id = ANY($1)",
        )
        .await
        .map_err(unavailable)?;
    let pending = tx
        .prepare_cached(
            "SELECT key_id, CASE WHEN kind = 'threshold' THEN threshold::text ELSE kind END AS label, event
             FROM budget_alerts WHERE key_id = ANY($1) AND published_at IS NULL ORDER BY created_at, threshold",
        )
        .await
        .map_err(unavailable)?;
    let read_rates = tx.prepare_cached(rates::READ).await.map_err(unavailable)?;
    let (rate_keys, rate_starts) = rates::slots(jobs);
    let mut periods: std::collections::HashMap<(i64, DateTime<Utc>), Vec<ThresholdState>> =
        std::collections::HashMap::new();
    // One round trip: the locks are taken before the state and the alerts still to publish are
    // read (a connection runs its statements in the order they were sent). Alerts fired below
    // are added to those; under the locks no one else adds any for these keys.
    let (lock_args, read_args, pending_args, rate_args): (Params, Params, Params, Params) = (
        &[&BUDGET_LOCK, &locks],
        &[&keys, &starts],
        &[&all],
        &[&rate_keys, &rate_starts],
    );
    let (_, rows, unpublished, rate_rows) = tokio::try_join!(
        tx.execute(&lock, lock_args),
        tx.query(&read, read_args),
        tx.query(&pending, pending_args),
        tx.query(&read_rates, rate_args)
    )
    .map_err(unavailable)?;
    let mut by_key: PendingByKey = std::collections::HashMap::new();
    for r in &unpublished {
        let text: String = r.get("event");
        let event = serde_json::from_str(&text).map_err(|e| {
            StoreError::Unavailable(Cause::context("stored alert is not valid JSON", e))
        })?;
        by_key
            .entry(r.get("key_id"))
            .or_default()
            .push(PendingAlert {
                event,
                label: r.get("label"),
            });
    }
    for r in rows {
        periods
            .entry((r.get("key_id"), r.get("period_start")))
            .or_default()
            .push(ThresholdState {
                threshold: u32::try_from(r.get::<_, i32>("threshold")).unwrap_or(0),
                generation: u32::try_from(r.get::<_, i32>("generation")).unwrap_or(0),
                armed: r.get("armed"),
                source_time: r.get("source_time"),
                budget: r.get("budget"),
            });
    }

    for obs in observations {
        let state = periods
            .entry((obs.key_id.get(), obs.period_start))
            .or_default();
        for change in budget::decide(obs, state) {
            if let Some(alert) = write_change(tx, obs, &change).await? {
                by_key.entry(obs.key_id.get()).or_default().push(alert);
            }
            budget::apply(state, obs, &change);
        }
    }
    let views = if jobs.is_empty() {
        Vec::new()
    } else {
        rates::apply(tx, jobs, &rate_rows, &mut by_key).await?
    };
    Ok((by_key, views))
}

/// Writes one decided change of `obs` inside its evaluation's transaction; a fired alert that
/// was recorded (not already there) comes back, to be published.
async fn write_change(
    tx: &deadpool_postgres::Transaction<'_>,
    obs: &SpendObservation,
    change: &Change,
) -> Result<Option<PendingAlert>, StoreError> {
    let key = obs.key_id.get();
    let threshold = to_i32(change.threshold());
    match change {
        Change::Rearm { .. } => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE budget_alert_state SET armed = TRUE, updated_at = now() WHERE key_id = $1 AND period_start = $2 AND threshold = $3",
                )
                .await
                .map_err(unavailable)?;
            tx.execute(&stmt, &[&key, &obs.period_start, &threshold])
                .await
                .map_err(unavailable)?;
        }
        Change::Mark { generation, .. } => {
            upsert_state(tx, obs, threshold, to_i32(*generation), None).await?;
        }
        Change::Fire(alert) => {
            let event = OutboundEvent::budget_alert(alert, None);
            let label = alert.threshold.to_string();
            let json = serde_json::to_string(&event).map_err(unavailable)?;
            upsert_state(
                tx,
                obs,
                threshold,
                to_i32(alert.generation),
                Some(alert.event_id.as_str()),
            )
            .await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO budget_alerts (alert_id, key_id, period_start, threshold, generation, source_event_id, event)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(unavailable)?;
            let inserted = tx
                .execute(
                    &stmt,
                    &[
                        &alert.event_id.as_str(),
                        &key,
                        &obs.period_start,
                        &threshold,
                        &to_i32(alert.generation),
                        &obs.event_id.as_str(),
                        &json,
                    ],
                )
                .await
                .map_err(unavailable)?;
            if inserted == 1 {
                return Ok(Some(PendingAlert { event, label }));
            }
        }
    }
    Ok(None)
}

const KEY_COLUMNS: &str = "id, key_hash, name, group_id, enabled, expires_at, is_admin, budget, budget_period, alert_thresholds, spike_alerts, current_spend, updated_at";

/// A key's own thresholds as stored. A list the rules refuse (written by hand or by an older
/// version) falls back to the node's default, with a warning: the key keeps working.
fn stored_thresholds(id: i64, list: Vec<i32>) -> Option<Thresholds> {
    let list = list
        .into_iter()
        .map(|t| u32::try_from(t).unwrap_or(0))
        .collect();
    Thresholds::from_list(list)
        .inspect_err(|e| {
            tracing::warn!(key_id = id, error = %e, "stored alert thresholds are invalid; using the default");
        })
        .ok()
}

fn key_from_row(row: &Row) -> Result<VirtualKey, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Unavailable(Cause::from(format!("stored key has bad {what}: {e}")))
    };
    let id: i64 = row.get("id");
    let hash: String = row.get("key_hash");
    let period: String = row.get("budget_period");
    let thresholds: Option<Vec<i32>> = row.get("alert_thresholds");
    Ok(VirtualKey {
        id: KeyId::new(id).map_err(|e| corrupt("id", &e))?,
        key_hash: KeyHash::parse(&hash).map_err(|e| corrupt("hash", &e))?,
        name: row.get("name"),
        group_id: row.get("group_id"),
        enabled: row.get("enabled"),
        expires_at: row.get("expires_at"),
        is_admin: row.get("is_admin"),
        budget: row.get("budget"),
        budget_period: BudgetPeriod::parse(&period).map_err(|e| corrupt("budget period", &e))?,
        alert_thresholds: thresholds.and_then(|v| stored_thresholds(id, v)),
        spike_alerts: row.get("spike_alerts"),
        current_spend: row.get("current_spend"),
        updated_at: row.get("updated_at"),
    })
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<VirtualKey>, StoreError> {
        let c = self.client().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE key_hash = $1");
        let stmt = c.prepare_cached(&sql).await.map_err(unavailable)?;
        let row = c
            .query_opt(&stmt, &[&hash.as_str()])
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn key_by_id(&self, id: KeyId) -> Result<Option<VirtualKey>, StoreError> {
        batched(self.keys.call(id).await)
    }

    async fn put_key(&self, k: &VirtualKey) -> Result<(), StoreError> {
        let thresholds: Option<Vec<i32>> = k
            .alert_thresholds
            .as_ref()
            .map(|v| v.as_slice().iter().map(|t| to_i32(*t)).collect());
        let result = self
            .client()
            .await?
            .execute(
                "INSERT INTO virtual_keys (id, key_hash, name, group_id, enabled, expires_at, is_admin, budget, budget_period, alert_thresholds, current_spend, spike_alerts, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())
                 ON CONFLICT (id) DO UPDATE SET key_hash = EXCLUDED.key_hash, name = EXCLUDED.name, group_id = EXCLUDED.group_id,
                   enabled = EXCLUDED.enabled, expires_at = EXCLUDED.expires_at, is_admin = EXCLUDED.is_admin, budget = EXCLUDED.budget,
                   budget_period = EXCLUDED.budget_period, alert_thresholds = EXCLUDED.alert_thresholds,
                   spike_alerts = EXCLUDED.spike_alerts, updated_at = now()",
                &[
                    &k.id.get(),
                    &k.key_hash.as_str(),
                    &k.name,
                    &k.group_id,
                    &k.enabled,
                    &k.expires_at,
                    &k.is_admin,
                    &k.budget,
                    &k.budget_period.as_str(),
                    &thresholds,
                    &k.current_spend,
                    &k.spike_alerts,
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::Conflict(
                format!("key hash already belongs to another key than {}", k.id),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete_key(&self, id: KeyId) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM virtual_keys WHERE id = $1", &[&id.get()])
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn record_spend(
        &self,
        id: KeyId,
        total: Decimal,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Only the trait's default `observe_spend` and tests call this alone; the consumer's
        // path is `observe_spend`, batched below.
        record_spends(&self.client().await?, &[Spend { id, total, at }]).await?;
        Ok(())
    }

    async fn evaluate_budget(
        &self,
        obs: &SpendObservation,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(unavailable)?;
        let (mut by_key, _) = evaluate_in(&tx, std::slice::from_ref(obs), &[]).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(by_key.remove(&obs.key_id.get()).unwrap_or_default())
    }

    async fn observe_spend(
        &self,
        facts: &SpendFacts,
        rules: &SpendRules,
    ) -> Result<SpendOutcome, StoreError> {
        batched(self.observed.call((facts.clone(), rules.clone())).await)
    }

    async fn spend_summary(
        &self,
        key: KeyId,
        recent: usize,
    ) -> Result<Option<SpendSummary>, StoreError> {
        let stored = self.key_by_id(key).await?;
        let c = self.client().await?;
        rates::summary(&c, key, stored.as_ref(), recent).await
    }

    async fn mark_alert_published(&self, alert: &EventId) -> Result<(), StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE budget_alerts SET published_at = now() WHERE alert_id = $1 AND published_at IS NULL",
            )
            .await
            .map_err(unavailable)?;
        c.execute(&stmt, &[&alert.as_str()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

async fn upsert_state(
    tx: &deadpool_postgres::Transaction<'_>,
    obs: &SpendObservation,
    threshold: i32,
    generation: i32,
    alert_id: Option<&str>,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO budget_alert_state (key_id, period_start, threshold, generation, armed, source_time, budget, alert_id, source_event_id)
             VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, $8)
             ON CONFLICT (key_id, period_start, threshold) DO UPDATE SET generation = EXCLUDED.generation, armed = FALSE,
               source_time = EXCLUDED.source_time, budget = EXCLUDED.budget, alert_id = EXCLUDED.alert_id,
               source_event_id = EXCLUDED.source_event_id, updated_at = now()",
        )
        .await
        .map_err(unavailable)?;
    tx.execute(
        &stmt,
        &[
            &obs.key_id.get(),
            &obs.period_start,
            &threshold,
            &generation,
            &obs.source_time,
            &obs.budget,
            &alert_id,
            &obs.event_id.as_str(),
        ],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}
