//! In-memory store for `standalone` without PostgreSQL. Same rules, one process.
use crate::contract::{PendingAlert, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_domain::budget::{self, Change, SpendObservation, ThresholdState};
use herald_domain::{EventId, KeyHash, KeyId, OutboundEvent, VirtualKey};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

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
                    threshold: alert.threshold,
                });
            }
        }
        let pending = inner.pending.entry(obs.key_id).or_default();
        pending.extend(fired);
        Ok(pending.clone())
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
