//! In-memory store for `standalone` without PostgreSQL. Same rules, one process.
use crate::contract::{PendingAlert, SpendOutcome, SpendRules, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_domain::budget::{self, Change, SpendFacts, SpendObservation, ThresholdState};
use herald_domain::fields::format_time;
use herald_domain::forecast::{self, RateInput, RateState};
use herald_domain::summary::{PeriodRate, Share, SpendSummary, SpendTransaction};
use herald_domain::{EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Transactions kept per key for the summary and for recognising a repeated event id (the
/// PostgreSQL store keeps as many).
pub(crate) const TRANSACTIONS_KEPT: usize = 2000;

/// One key's recorded SpendUpdated events, newest last, and their ids.
#[derive(Default)]
struct Transactions {
    list: VecDeque<(DateTime<Utc>, SpendTransaction)>,
    ids: HashSet<String>,
}

/// Spend per model and per provider in one (key, period).
#[derive(Default)]
struct Breakdown {
    models: HashMap<Option<String>, (Decimal, u64)>,
    providers: HashMap<Option<String>, (Decimal, u64)>,
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    keys: HashMap<KeyId, VirtualKey>,
    spend_at: HashMap<KeyId, DateTime<Utc>>,
    /// (key, period start) → threshold states.
    thresholds: HashMap<(KeyId, DateTime<Utc>), Vec<ThresholdState>>,
    /// Fired alerts not yet confirmed published, by key.
    pending: HashMap<KeyId, Vec<PendingAlert>>,
    /// (key, period start) → burn rate state and what the summary shows of it.
    rates: HashMap<(KeyId, DateTime<Utc>), (RateState, PeriodRate)>,
    transactions: HashMap<KeyId, Transactions>,
    breakdown: HashMap<(KeyId, DateTime<Utc>), Breakdown>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<VirtualKey>, StoreError> {
        Ok(self
            .lock()
            .keys
            .values()
            .find(|k| &k.key_hash == hash)
            .cloned())
    }

    async fn key_by_id(&self, id: KeyId) -> Result<Option<VirtualKey>, StoreError> {
        Ok(self.lock().keys.get(&id).cloned())
    }

    async fn put_key(&self, key: &VirtualKey) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .keys
            .values()
            .any(|k| k.key_hash == key.key_hash && k.id != key.id)
        {
            return Err(StoreError::Conflict(format!(
                "key hash already belongs to another key than {}",
                key.id
            )));
        }
        inner.keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn delete_key(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.lock().keys.remove(&id).is_some())
    }

    async fn record_spend(
        &self,
        id: KeyId,
        total: Decimal,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.spend_at.get(&id).is_some_and(|t| *t > at) {
            return Ok(());
        }
        inner.spend_at.insert(id, at);
        if let Some(k) = inner.keys.get_mut(&id) {
            k.current_spend = total;
            k.updated_at = Utc::now();
        }
        Ok(())
    }

    async fn evaluate_budget(
        &self,
        obs: &SpendObservation,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let mut inner = self.lock();
        let state = inner
            .thresholds
            .entry((obs.key_id, obs.period_start))
            .or_default();
        let mut fired = Vec::new();
        for change in budget::decide(obs, state) {
            budget::apply(state, obs, &change);
            if let Change::Fire(alert) = &change {
                fired.push(PendingAlert {
                    event: OutboundEvent::budget_alert(alert, None),
                    label: alert.threshold.to_string(),
                });
            }
        }
        let pending = inner.pending.entry(obs.key_id).or_default();
        pending.extend(fired);
        Ok(pending.clone())
    }

    async fn observe_spend(
        &self,
        facts: &SpendFacts,
        rules: &SpendRules,
    ) -> Result<SpendOutcome, StoreError> {
        let key = self.key_by_id(facts.key_id).await?;
        self.record_spend(facts.key_id, facts.total_spend, facts.source_time)
            .await?;
        let pending = match facts.observation(key.as_ref(), &rules.thresholds) {
            Some(obs) => self.evaluate_budget(&obs).await?,
            None => Vec::new(),
        };
        let Some(cfg) = rules.rates else {
            return Ok(SpendOutcome {
                key,
                pending,
                rate: None,
            });
        };
        let input = RateInput::of(facts, key.as_ref());
        let mut inner = self.lock();
        let slot = (facts.key_id, input.period_start);
        let step = forecast::observe(inner.rates.get(&slot).map(|(s, _)| s), &input, &cfg);
        if step.changed {
            let shown = PeriodRate {
                period: input.period,
                period_start: input.period_start,
                view: step.view.clone(),
                window_minutes: cfg.window.as_secs() / 60,
            };
            inner.rates.insert(slot, (step.state.clone(), shown));
        }
        record_transaction(&mut inner, facts, input.period_start);
        let list = inner.pending.entry(facts.key_id).or_default();
        list.extend(step.alerts.iter().map(|a| PendingAlert {
            event: OutboundEvent::spend_alert(a),
            label: a.label().to_owned(),
        }));
        // Every alert of the key still to publish: the thresholds' (evaluated above) and these.
        Ok(SpendOutcome {
            key,
            pending: list.clone(),
            rate: Some(step.view),
        })
    }

    async fn spend_summary(
        &self,
        key: KeyId,
        recent: usize,
    ) -> Result<Option<SpendSummary>, StoreError> {
        let inner = self.lock();
        let stored = inner.keys.get(&key).cloned();
        let rate = inner
            .rates
            .iter()
            .filter(|((k, _), _)| *k == key)
            .max_by_key(|((_, start), _)| *start)
            .map(|(_, (_, shown))| shown.clone());
        let Some(period) = rate.as_ref().map(|r| r.period_start) else {
            return Ok(SpendSummary::build(
                key,
                stored.as_ref(),
                None,
                vec![],
                vec![],
                vec![],
            ));
        };
        let shares = |m: &HashMap<Option<String>, (Decimal, u64)>| -> Vec<Share> {
            m.iter()
                .map(|(name, (spend, requests))| Share {
                    name: name.clone(),
                    spend: *spend,
                    requests: *requests,
                })
                .collect()
        };
        let (models, providers) = inner
            .breakdown
            .get(&(key, period))
            .map(|b| (shares(&b.models), shares(&b.providers)))
            .unwrap_or_default();
        let mut list: Vec<&(DateTime<Utc>, SpendTransaction)> = inner
            .transactions
            .get(&key)
            .map(|t| t.list.iter().filter(|(p, _)| *p == period).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| b.1.timestamp.cmp(&a.1.timestamp));
        let recent = list
            .into_iter()
            .take(recent)
            .map(|(_, t)| t.clone())
            .collect();
        Ok(SpendSummary::build(
            key,
            stored.as_ref(),
            rate,
            models,
            providers,
            recent,
        ))
    }

    async fn mark_alert_published(&self, alert: &EventId) -> Result<(), StoreError> {
        for list in self.lock().pending.values_mut() {
            list.retain(|a| &a.event.event_id != alert);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Records the event for the summary once per event id, adding its amount to the period's
/// breakdown; the oldest beyond [`TRANSACTIONS_KEPT`] are dropped.
fn record_transaction(inner: &mut Tables, facts: &SpendFacts, period: DateTime<Utc>) {
    let kept = inner.transactions.entry(facts.key_id).or_default();
    if !kept.ids.insert(facts.event_id.as_str().to_owned()) {
        return;
    }
    kept.list.push_back((
        period,
        SpendTransaction {
            event_id: facts.event_id.as_str().to_owned(),
            timestamp: format_time(facts.source_time),
            amount: facts.amount,
            total_spend: facts.total_spend,
            model: facts.model.clone(),
            provider: facts.provider.clone(),
            request_id: facts.request_id.clone(),
        },
    ));
    while kept.list.len() > TRANSACTIONS_KEPT {
        if let Some((_, old)) = kept.list.pop_front() {
            kept.ids.remove(&old.event_id);
        }
    }
    let b = inner.breakdown.entry((facts.key_id, period)).or_default();
    for (map, name) in [
        (&mut b.models, &facts.model),
        (&mut b.providers, &facts.provider),
    ] {
        let e = map.entry(name.clone()).or_default();
        e.0 = e.0.saturating_add(facts.amount);
        e.1 += 1;
    }
}
