//! The PostgreSQL side of spend intelligence (docs/events.md, "Spend intelligence"): the burn
//! rate state of each (key, period), forecast and spike alerts, the summary's transactions and
//! breakdown. Runs inside the budget transaction of a batch, under the keys' advisory locks
//! (postgres.rs): one extra round trip per batch, not per event.
use crate::contract::{PendingAlert, StoreError};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use herald_domain::budget::SpendFacts;
use herald_domain::forecast::{
    self, Projection, RateConfig, RateInput, RateState, RateView, Trend,
};
use herald_domain::summary::{PeriodRate, Share, SpendSummary, SpendTransaction};
use herald_domain::{BudgetPeriod, Cause, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use std::collections::HashMap;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Transactions kept per key and period: the summary's list and the window in which a
/// repeated event id is recognised (as many as the in-memory store keeps).
const TRANSACTIONS_KEPT: i64 = 2000;
/// Every this many events of a period, the transactions beyond [`TRANSACTIONS_KEPT`] go.
const PRUNE_EVERY: u32 = 1000;

/// One SpendUpdated of a batch that feeds a burn rate.
pub(crate) struct RateJob<'a> {
    /// Its place in the batch.
    pub place: usize,
    pub input: RateInput,
    pub cfg: RateConfig,
    pub facts: &'a SpendFacts,
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Cause::new(e))
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) const READ: &str =
    "SELECT s.key_id, s.period_start, s.first_time, s.last_time, s.last_total, s.events,
        s.spike_sum, s.window_sum, s.baseline_sum, s.forecast_generation, s.forecast_active,
        s.forecast_budget, s.spike_generation, s.spike_active
     FROM spend_rate_state s
     JOIN (SELECT DISTINCT * FROM unnest($1::int8[], $2::timestamptz[])) AS p(key_id, period_start)
       ON s.key_id = p.key_id AND s.period_start = p.period_start
     WHERE s.key_id = ANY($1)";

const UPSERT: &str = "INSERT INTO spend_rate_state (key_id, period_start, budget_period, first_time, last_time,
        last_total, events, spike_sum, window_sum, baseline_sum, forecast_generation, forecast_active,
        forecast_budget, spike_generation, spike_active, burn_rate_per_hour, trend,
        projected_exhaustion, exceeds_budget, window_minutes)
     SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::timestamptz[], $5::timestamptz[],
        $6::numeric[], $7::int4[], $8::float8[], $9::float8[], $10::float8[], $11::int4[], $12::bool[],
        $13::numeric[], $14::int4[], $15::bool[], $16::numeric[], $17::text[], $18::timestamptz[],
        $19::bool[], $20::int4[])
     ON CONFLICT (key_id, period_start) DO UPDATE SET budget_period = EXCLUDED.budget_period,
        first_time = EXCLUDED.first_time, last_time = EXCLUDED.last_time, last_total = EXCLUDED.last_total,
        events = EXCLUDED.events, spike_sum = EXCLUDED.spike_sum, window_sum = EXCLUDED.window_sum,
        baseline_sum = EXCLUDED.baseline_sum, forecast_generation = EXCLUDED.forecast_generation,
        forecast_active = EXCLUDED.forecast_active, forecast_budget = EXCLUDED.forecast_budget,
        spike_generation = EXCLUDED.spike_generation, spike_active = EXCLUDED.spike_active,
        burn_rate_per_hour = EXCLUDED.burn_rate_per_hour, trend = EXCLUDED.trend,
        projected_exhaustion = EXCLUDED.projected_exhaustion, exceeds_budget = EXCLUDED.exceeds_budget,
        window_minutes = EXCLUDED.window_minutes, updated_at = now()";

/// Each event once by id; only the events new to the table add to the breakdown.
const TRANSACTIONS: &str = "WITH ins AS (
        INSERT INTO spend_transactions (event_id, key_id, period_start, source_time, amount, total_spend, model, provider, request_id)
        SELECT DISTINCT ON (u.event_id) * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::timestamptz[],
            $5::numeric[], $6::numeric[], $7::text[], $8::text[], $9::text[])
          AS u(event_id, key_id, period_start, source_time, amount, total_spend, model, provider, request_id)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING key_id, period_start, amount, model, provider
     ), dims AS (
        SELECT key_id, period_start, 'model' AS dimension, coalesce(model, '') AS name, amount FROM ins
        UNION ALL
        SELECT key_id, period_start, 'provider', coalesce(provider, ''), amount FROM ins
     )
     INSERT INTO spend_breakdown (key_id, period_start, dimension, name, spend, requests)
     SELECT key_id, period_start, dimension, name, sum(amount), count(*) FROM dims
     GROUP BY key_id, period_start, dimension, name
     ON CONFLICT (key_id, period_start, dimension, name) DO UPDATE
       SET spend = spend_breakdown.spend + EXCLUDED.spend, requests = spend_breakdown.requests + EXCLUDED.requests";

/// Earlier periods' transactions, and those of this period beyond the newest kept.
const PRUNE: &str = "DELETE FROM spend_transactions t
     USING unnest($1::int8[], $2::timestamptz[]) AS p(key_id, period_start)
     WHERE t.key_id = ANY($1) AND t.key_id = p.key_id
       AND (t.period_start < p.period_start
            OR (t.period_start = p.period_start AND t.source_time < (
                SELECT x.source_time FROM spend_transactions x
                WHERE x.key_id = p.key_id AND x.period_start = p.period_start
                ORDER BY x.source_time DESC OFFSET $3 LIMIT 1)))";

const ALERT: &str = "INSERT INTO budget_alerts (alert_id, key_id, period_start, threshold, generation, source_event_id, event, kind)
     VALUES ($1, $2, $3, 0, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

/// The (key, period start) of each job, for [`READ`].
pub(crate) fn slots(jobs: &[RateJob<'_>]) -> (Vec<i64>, Vec<DateTime<Utc>>) {
    jobs.iter()
        .map(|j| (j.input.key_id.get(), j.input.period_start))
        .unzip()
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn state_of(r: &Row) -> RateState {
    let n = |c: &str| u32::try_from(r.get::<_, i32>(c)).unwrap_or(0);
    RateState {
        first_time: r.get("first_time"),
        last_time: r.get("last_time"),
        last_total: r.get("last_total"),
        events: n("events"),
        spike_sum: r.get("spike_sum"),
        window_sum: r.get("window_sum"),
        baseline_sum: r.get("baseline_sum"),
        forecast_generation: n("forecast_generation"),
        forecast_active: r.get("forecast_active"),
        forecast_budget: r.get("forecast_budget"),
        spike_generation: n("spike_generation"),
        spike_active: r.get("spike_active"),
    }
}

type Slot = (i64, DateTime<Utc>);

/// A period's state to write back, with what the summary shows of it.
struct Written {
    state: RateState,
    view: RateView,
    period: BudgetPeriod,
    window_minutes: u64,
}

/// Runs the pure rules for each job in batch order on the states read (`rows`), records the
/// alerts they fire (once: `budget_alerts`' keys), writes the states, the transactions and the
/// breakdown, and returns each job's view.
pub(crate) async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[RateJob<'_>],
    rows: &[Row],
    by_key: &mut HashMap<i64, Vec<PendingAlert>>,
) -> Result<Vec<RateView>, StoreError> {
    let mut states: HashMap<Slot, RateState> = rows
        .iter()
        .map(|r| ((r.get("key_id"), r.get("period_start")), state_of(r)))
        .collect();
    let mut written: Vec<(Slot, Written)> = Vec::new();
    let mut prune: Vec<Slot> = Vec::new();
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        let slot = (job.input.key_id.get(), job.input.period_start);
        let step = forecast::observe(states.get(&slot), &job.input, &job.cfg);
        if step.changed {
            if step.state.events == 1 || step.state.events.is_multiple_of(PRUNE_EVERY) {
                prune.push(slot);
            }
            states.insert(slot, step.state.clone());
            let w = Written {
                state: step.state,
                view: step.view.clone(),
                period: job.input.period,
                window_minutes: job.cfg.window.as_secs() / 60,
            };
            match written.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, old)) => *old = w,
                None => written.push((slot, w)),
            }
        }
        for alert in &step.alerts {
            let event = OutboundEvent::spend_alert(alert);
            let json = serde_json::to_string(&event).map_err(unavailable)?;
            let stmt = tx.prepare_cached(ALERT).await.map_err(unavailable)?;
            let inserted = tx
                .execute(
                    &stmt,
                    &[
                        &alert.event_id.as_str(),
                        &slot.0,
                        &slot.1,
                        &to_i32(alert.generation),
                        &alert.source_event_id.as_str(),
                        &json,
                        &alert.label(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            if inserted == 1 {
                by_key.entry(slot.0).or_default().push(PendingAlert {
                    event,
                    label: alert.label().to_owned(),
                });
            }
        }
        views.push(step.view);
    }
    write(tx, jobs, &written, &prune).await?;
    Ok(views)
}

/// The batch's writes, sent together: one round trip.
async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[RateJob<'_>],
    written: &[(Slot, Written)],
    prune: &[Slot],
) -> Result<(), StoreError> {
    let upsert = tx.prepare_cached(UPSERT).await.map_err(unavailable)?;
    let record = tx.prepare_cached(TRANSACTIONS).await.map_err(unavailable)?;
    let cut = tx.prepare_cached(PRUNE).await.map_err(unavailable)?;

    let st = |f: fn(&Written) -> i32| written.iter().map(|(_, w)| f(w)).collect::<Vec<i32>>();
    let keys: Vec<i64> = written.iter().map(|(s, _)| s.0).collect();
    let starts: Vec<DateTime<Utc>> = written.iter().map(|(s, _)| s.1).collect();
    let periods: Vec<&str> = written.iter().map(|(_, w)| w.period.as_str()).collect();
    let firsts: Vec<DateTime<Utc>> = written.iter().map(|(_, w)| w.state.first_time).collect();
    let lasts: Vec<DateTime<Utc>> = written.iter().map(|(_, w)| w.state.last_time).collect();
    let totals: Vec<Decimal> = written.iter().map(|(_, w)| w.state.last_total).collect();
    let events = st(|w| to_i32(w.state.events));
    let spike: Vec<f64> = written.iter().map(|(_, w)| w.state.spike_sum).collect();
    let window: Vec<f64> = written.iter().map(|(_, w)| w.state.window_sum).collect();
    let baseline: Vec<f64> = written.iter().map(|(_, w)| w.state.baseline_sum).collect();
    let fgen = st(|w| to_i32(w.state.forecast_generation));
    let factive: Vec<bool> = written
        .iter()
        .map(|(_, w)| w.state.forecast_active)
        .collect();
    let fbudget: Vec<Option<Decimal>> = written
        .iter()
        .map(|(_, w)| w.state.forecast_budget)
        .collect();
    let sgen = st(|w| to_i32(w.state.spike_generation));
    let sactive: Vec<bool> = written.iter().map(|(_, w)| w.state.spike_active).collect();
    let rate: Vec<Decimal> = written
        .iter()
        .map(|(_, w)| w.view.burn_rate_per_hour)
        .collect();
    let trend: Vec<&str> = written.iter().map(|(_, w)| w.view.trend.as_str()).collect();
    let exhaustion: Vec<Option<DateTime<Utc>>> = written
        .iter()
        .map(|(_, w)| w.view.projection.map(|p| p.exhaustion))
        .collect();
    let exceeds: Vec<Option<bool>> = written
        .iter()
        .map(|(_, w)| w.view.projection.map(|p| p.exceeds_budget))
        .collect();
    let minutes = st(|w| i32::try_from(w.window_minutes).unwrap_or(i32::MAX));
    let upsert_args: Params = &[
        &keys,
        &starts,
        &periods,
        &firsts,
        &lasts,
        &totals,
        &events,
        &spike,
        &window,
        &baseline,
        &fgen,
        &factive,
        &fbudget,
        &sgen,
        &sactive,
        &rate,
        &trend,
        &exhaustion,
        &exceeds,
        &minutes,
    ];

    let ids: Vec<&str> = jobs.iter().map(|j| j.facts.event_id.as_str()).collect();
    let tkeys: Vec<i64> = jobs.iter().map(|j| j.input.key_id.get()).collect();
    let tstarts: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.input.period_start).collect();
    let times: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.facts.source_time).collect();
    let amounts: Vec<Decimal> = jobs.iter().map(|j| j.facts.amount).collect();
    let ttotals: Vec<Decimal> = jobs.iter().map(|j| j.facts.total_spend).collect();
    let models: Vec<Option<&str>> = jobs.iter().map(|j| j.facts.model.as_deref()).collect();
    let providers: Vec<Option<&str>> = jobs.iter().map(|j| j.facts.provider.as_deref()).collect();
    let requests: Vec<Option<&str>> = jobs.iter().map(|j| j.facts.request_id.as_deref()).collect();
    let record_args: Params = &[
        &ids, &tkeys, &tstarts, &times, &amounts, &ttotals, &models, &providers, &requests,
    ];
    let (pkeys, pstarts): (Vec<i64>, Vec<DateTime<Utc>>) = prune.iter().copied().unzip();
    let prune_args: Params = &[&pkeys, &pstarts, &TRANSACTIONS_KEPT];
    tokio::try_join!(
        tx.execute(&upsert, upsert_args),
        tx.execute(&record, record_args),
        async {
            if prune.is_empty() {
                Ok(0)
            } else {
                tx.execute(&cut, prune_args).await
            }
        }
    )
    .map_err(unavailable)?;
    Ok(())
}

/// `GetSpendSummary` from the durable record: the key's latest period (one round trip after
/// the key's lookup).
pub(crate) async fn summary(
    c: &impl GenericClient,
    key: KeyId,
    stored: Option<&VirtualKey>,
    recent: usize,
) -> Result<Option<SpendSummary>, StoreError> {
    let latest = "(SELECT max(period_start) FROM spend_rate_state WHERE key_id = $1)";
    let rate = c
        .prepare_cached(
            "SELECT period_start, budget_period, burn_rate_per_hour, trend, last_time,
                projected_exhaustion, exceeds_budget, window_minutes
             FROM spend_rate_state WHERE key_id = $1 ORDER BY period_start DESC LIMIT 1",
        )
        .await
        .map_err(unavailable)?;
    let shares = c
        .prepare_cached(&format!(
            "SELECT dimension, name, spend, requests FROM spend_breakdown
             WHERE key_id = $1 AND period_start = {latest}"
        ))
        .await
        .map_err(unavailable)?;
    let list = c
        .prepare_cached(&format!(
            "SELECT event_id, source_time, amount, total_spend, model, provider, request_id
             FROM spend_transactions WHERE key_id = $1 AND period_start = {latest}
             ORDER BY source_time DESC, event_id DESC LIMIT $2"
        ))
        .await
        .map_err(unavailable)?;
    let id = key.get();
    let limit = i64::try_from(recent).unwrap_or(i64::MAX);
    let (rate_args, share_args, list_args): (Params, Params, Params) =
        (&[&id], &[&id], &[&id, &limit]);
    let (rate, shares, list) = tokio::try_join!(
        c.query_opt(&rate, rate_args),
        c.query(&shares, share_args),
        c.query(&list, list_args)
    )
    .map_err(unavailable)?;
    let rate = match rate {
        None => None,
        Some(r) => {
            let period: String = r.get("budget_period");
            let exhaustion: Option<DateTime<Utc>> = r.get("projected_exhaustion");
            let exceeds: Option<bool> = r.get("exceeds_budget");
            let trend: String = r.get("trend");
            Some(PeriodRate {
                period: BudgetPeriod::parse(&period).unwrap_or_default(),
                period_start: r.get("period_start"),
                view: RateView {
                    burn_rate_per_hour: r.get("burn_rate_per_hour"),
                    trend: Trend::parse(&trend),
                    as_of: r.get("last_time"),
                    projection: exhaustion.map(|exhaustion| Projection {
                        exhaustion,
                        exceeds_budget: exceeds.unwrap_or(false),
                    }),
                },
                window_minutes: u64::try_from(r.get::<_, i32>("window_minutes")).unwrap_or(0),
            })
        }
    };
    let (mut models, mut providers) = (Vec::new(), Vec::new());
    for r in &shares {
        let dimension: String = r.get("dimension");
        let name: String = r.get("name");
        let share = Share {
            name: (!name.is_empty()).then_some(name),
            spend: r.get("spend"),
            requests: u64::try_from(r.get::<_, i64>("requests")).unwrap_or(0),
        };
        if dimension == "model" {
            models.push(share);
        } else {
            providers.push(share);
        }
    }
    let recent = list
        .iter()
        .map(|r| SpendTransaction {
            event_id: r.get("event_id"),
            timestamp: herald_domain::fields::format_time(r.get("source_time")),
            amount: r.get("amount"),
            total_spend: r.get("total_spend"),
            model: r.get("model"),
            provider: r.get("provider"),
            request_id: r.get("request_id"),
        })
        .collect();
    Ok(SpendSummary::build(
        key, stored, rate, models, providers, recent,
    ))
}
