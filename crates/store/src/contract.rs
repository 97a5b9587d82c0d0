//! What every store provides: the `Store` trait, its error and what a spend observation returns.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_domain::budget::{SpendFacts, SpendObservation};
use herald_domain::forecast::{RateConfig, RateView};
use herald_domain::summary::SpendSummary;
use herald_domain::thresholds::Thresholds;
use herald_domain::{Cause, EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or failed; the caller retries later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The write contradicts what is stored (e.g. a key hash already used by another id).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A budget alert that must be published: newly fired, or fired earlier and not yet confirmed
/// as published (the consumer crashed in between). Publishing it again is harmless: its event
/// id is stable, so the backplane drops the repeat.
#[derive(Debug, Clone)]
pub struct PendingAlert {
    pub event: OutboundEvent,
    /// What fired it: the threshold in percent (`"90"`), `"forecast"` or `"spike"`; the
    /// `threshold` label of `herald_budget_alerts_total`.
    pub label: String,
}

/// The node's rules for a SpendUpdated: the default thresholds and, unless
/// `HERALD_SPEND_FORECAST=off`, the burn rate's settings.
#[derive(Debug, Clone, Default)]
pub struct SpendRules {
    pub thresholds: Thresholds,
    pub rates: Option<RateConfig>,
}

/// The store's side of one SpendUpdated (see [`Store::observe_spend`]).
#[derive(Debug, Clone)]
pub struct SpendOutcome {
    /// The key as stored, if it is.
    pub key: Option<VirtualKey>,
    /// Every alert of the key still to be published.
    pub pending: Vec<PendingAlert>,
    /// The key's burn rate and trend after this event (with `SpendRules::rates` only).
    pub rate: Option<RateView>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<VirtualKey>, StoreError>;
    async fn key_by_id(&self, id: KeyId) -> Result<Option<VirtualKey>, StoreError>;
    /// Inserts or replaces the key with this id. `Conflict` if its hash belongs to another id.
    async fn put_key(&self, key: &VirtualKey) -> Result<(), StoreError>;
    /// Removes the key; `false` if there was none.
    async fn delete_key(&self, id: KeyId) -> Result<bool, StoreError>;
    /// Stores the key's running total, unless a newer (by source time) total is already stored.
    async fn record_spend(
        &self,
        id: KeyId,
        total: Decimal,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Applies the budget rules to `obs` atomically for its key and period (safe with many
    /// consumers) and returns every alert of that key still to be published.
    async fn evaluate_budget(
        &self,
        obs: &SpendObservation,
    ) -> Result<Vec<PendingAlert>, StoreError>;
    /// The whole store side of a SpendUpdated: looks its key up, records its total (unless a
    /// newer one is stored) and, when a positive budget applies, evaluates it. Stores that can
    /// do it in one round trip override this.
    ///
    /// With `rules.rates`, it also updates the key's burn rate, fires forecast and spike
    /// alerts and records the event for the spend summary, in the same atomic step; this
    /// default (a store made of the three calls) has no rates.
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
        Ok(SpendOutcome {
            key,
            pending,
            rate: None,
        })
    }

    /// The key's spend summary with its `recent` newest events (docs/protocol.md,
    /// `GetSpendSummary`); `None` when the store knows neither the key nor its spend.
    async fn spend_summary(
        &self,
        key: KeyId,
        recent: usize,
    ) -> Result<Option<SpendSummary>, StoreError> {
        let stored = self.key_by_id(key).await?;
        Ok(SpendSummary::build(
            key,
            stored.as_ref(),
            None,
            Vec::new(),
            Vec::new(),
            Vec::new(),
        )
        .map(|s| s.with_limit(recent)))
    }

    /// Records that the alert reached the backplane.
    async fn mark_alert_published(&self, alert: &EventId) -> Result<(), StoreError>;
    /// Ok while the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

pub type SharedStore = Arc<dyn Store>;
