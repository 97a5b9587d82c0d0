//! PostgreSQL store. Budget evaluation runs in one transaction per observation under a
//! per-key advisory lock, and the unique keys of `budget_alerts` make firing exactly-once even
//! if two consumers race past the lock (e.g. after a failover).
use crate::{PendingAlert, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use herald_domain::budget::{self, Change, SpendObservation, ThresholdState};
use herald_domain::{BudgetPeriod, EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use std::str::FromStr;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

/// The migrations, in order. `herald migrate` and `HERALD_MIGRATE=true` apply them.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../../migrations/0001_init.sql"))];

/// Lock id namespace for `pg_advisory_xact_lock(namespace, key)`.
const BUDGET_LOCK: i32 = 0x4845_5241; // "HERA"
const MIGRATION_LOCK: i64 = 0x4845_5241_4c44; // "HERALD"

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pool(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("invalid database URL: {e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(unavailable)
}

/// Applies every migration not yet applied, under an advisory lock so concurrent start-ups
/// don't race.
pub async fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
    let pool = pool(url, 1)?;
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
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Unavailable(format!("migration {version}: {e}")))?;
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
    pub fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        Ok(Self {
            pool: pool(url, max_connections)?,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }
}

const KEY_COLUMNS: &str = "id, key_hash, name, group_id, enabled, expires_at, is_admin, budget, budget_period, alert_thresholds, current_spend, updated_at";

fn key_from_row(row: &Row) -> Result<VirtualKey, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("stored key has bad {what}: {e}"))
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
        alert_thresholds: thresholds.map(|v| {
            v.into_iter()
                .filter_map(|t| u32::try_from(t).ok())
                .collect()
        }),
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
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE key_hash = $1");
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&hash.as_str()])
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn key_by_id(&self, id: KeyId) -> Result<Option<VirtualKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE id = $1");
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&id.get()])
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn put_key(&self, k: &VirtualKey) -> Result<(), StoreError> {
        let thresholds: Option<Vec<i32>> = k
            .alert_thresholds
            .as_ref()
            .map(|v| v.iter().map(|t| to_i32(*t)).collect());
        let result = self
            .client()
            .await?
            .execute(
                "INSERT INTO virtual_keys (id, key_hash, name, group_id, enabled, expires_at, is_admin, budget, budget_period, alert_thresholds, current_spend, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
                 ON CONFLICT (id) DO UPDATE SET key_hash = EXCLUDED.key_hash, name = EXCLUDED.name, group_id = EXCLUDED.group_id,
                   enabled = EXCLUDED.enabled, expires_at = EXCLUDED.expires_at, is_admin = EXCLUDED.is_admin, budget = EXCLUDED.budget,
                   budget_period = EXCLUDED.budget_period, alert_thresholds = EXCLUDED.alert_thresholds, updated_at = now()",
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
        self.client()
            .await?
            .execute(
                "UPDATE virtual_keys SET current_spend = $2, spend_at = $3, updated_at = now()
                 WHERE id = $1 AND (spend_at IS NULL OR spend_at <= $3)",
                &[&id.get(), &total, &at],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn evaluate_budget(
        &self,
        obs: &SpendObservation,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let key = obs.key_id.get();
        // Serialise evaluations of one key across consumers; the lock ends with the transaction.
        let lock_key = i32::try_from(key.rem_euclid(i64::from(i32::MAX))).unwrap_or(0);
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&BUDGET_LOCK, &lock_key],
        )
        .await
        .map_err(unavailable)?;
        let rows = tx
            .query(
                "SELECT threshold, generation, armed, source_time, budget FROM budget_alert_state WHERE key_id = $1 AND period_start = $2",
                &[&key, &obs.period_start],
            )
            .await
            .map_err(unavailable)?;
        let state: Vec<ThresholdState> = rows
            .iter()
            .map(|r| ThresholdState {
                threshold: u32::try_from(r.get::<_, i32>("threshold")).unwrap_or(0),
                generation: u32::try_from(r.get::<_, i32>("generation")).unwrap_or(0),
                armed: r.get("armed"),
                source_time: r.get("source_time"),
                budget: r.get("budget"),
            })
            .collect();
        for change in budget::decide(obs, &state) {
            let threshold = to_i32(change.threshold());
            match change {
                Change::Rearm { .. } => {
                    tx.execute(
                        "UPDATE budget_alert_state SET armed = TRUE, updated_at = now() WHERE key_id = $1 AND period_start = $2 AND threshold = $3",
                        &[&key, &obs.period_start, &threshold],
                    )
                    .await
                    .map_err(unavailable)?;
                }
                Change::Mark { generation, .. } => {
                    upsert_state(&tx, obs, threshold, to_i32(generation), None).await?;
                }
                Change::Fire(alert) => {
                    let event = OutboundEvent::budget_alert(&alert, None);
                    let json = serde_json::to_string(&event).map_err(unavailable)?;
                    upsert_state(
                        &tx,
                        obs,
                        threshold,
                        to_i32(alert.generation),
                        Some(alert.event_id.as_str()),
                    )
                    .await?;
                    tx.execute(
                        "INSERT INTO budget_alerts (alert_id, key_id, period_start, threshold, generation, source_event_id, event)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
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
                }
            }
        }
        let pending = tx
            .query(
                "SELECT event FROM budget_alerts WHERE key_id = $1 AND published_at IS NULL ORDER BY created_at, threshold",
                &[&key],
            )
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        pending
            .iter()
            .map(|r| {
                let text: String = r.get("event");
                serde_json::from_str(&text)
                    .map(|event| PendingAlert { event })
                    .map_err(|e| {
                        StoreError::Unavailable(format!("stored alert is not valid JSON: {e}"))
                    })
            })
            .collect()
    }

    async fn mark_alert_published(&self, alert: &EventId) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE budget_alerts SET published_at = now() WHERE alert_id = $1 AND published_at IS NULL",
                &[&alert.as_str()],
            )
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
    tx.execute(
        "INSERT INTO budget_alert_state (key_id, period_start, threshold, generation, armed, source_time, budget, alert_id, source_event_id)
         VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, $8)
         ON CONFLICT (key_id, period_start, threshold) DO UPDATE SET generation = EXCLUDED.generation, armed = FALSE,
           source_time = EXCLUDED.source_time, budget = EXCLUDED.budget, alert_id = EXCLUDED.alert_id,
           source_event_id = EXCLUDED.source_event_id, updated_at = now()",
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
