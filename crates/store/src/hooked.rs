//! A store for tests of the code that uses one: the in-memory store with a hook that runs
//! before each call and may delay it, fail it (an outage) or panic (a bug). Behind the
//! `test-support` feature.
use crate::contract::{PendingAlert, Store, StoreError};
use crate::memory::MemoryStore;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_domain::budget::SpendObservation;
use herald_domain::{EventId, KeyHash, KeyId, VirtualKey};
use rust_decimal::Decimal;
use std::future::Future;
use std::pin::Pin;

/// The call a hook is asked about. `observe_spend` is not hooked itself: it is the trait's
/// default, made of `key_by_id`, `record_spend` and `evaluate_budget`, each hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    KeyByHash,
    KeyById(KeyId),
    PutKey(KeyId),
    DeleteKey(KeyId),
    RecordSpend(KeyId),
    EvaluateBudget(KeyId),
    MarkAlertPublished,
    Ping,
}

type Hook =
    Box<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> + Send + Sync>;

/// [`MemoryStore`] behind a hook: a call goes on to the store only if its hook returns `Ok`.
pub struct Hooked {
    inner: MemoryStore,
    hook: Hook,
}

impl Hooked {
    pub fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        Self {
            inner: MemoryStore::new(),
            hook: Box::new(move |call| Box::pin(hook(call))),
        }
    }

    async fn hook(&self, call: Call) -> Result<(), StoreError> {
        (self.hook)(call).await
    }
}

#[async_trait]
impl Store for Hooked {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<VirtualKey>, StoreError> {
        self.hook(Call::KeyByHash).await?;
        self.inner.key_by_hash(hash).await
    }
    async fn key_by_id(&self, id: KeyId) -> Result<Option<VirtualKey>, StoreError> {
        self.hook(Call::KeyById(id)).await?;
        self.inner.key_by_id(id).await
    }
    async fn put_key(&self, key: &VirtualKey) -> Result<(), StoreError> {
        self.hook(Call::PutKey(key.id)).await?;
        self.inner.put_key(key).await
    }
    async fn delete_key(&self, id: KeyId) -> Result<bool, StoreError> {
        self.hook(Call::DeleteKey(id)).await?;
        self.inner.delete_key(id).await
    }
    async fn record_spend(
        &self,
        id: KeyId,
        total: Decimal,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.hook(Call::RecordSpend(id)).await?;
        self.inner.record_spend(id, total, at).await
    }
    async fn evaluate_budget(
        &self,
        obs: &SpendObservation,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        self.hook(Call::EvaluateBudget(obs.key_id)).await?;
        self.inner.evaluate_budget(obs).await
    }
    async fn mark_alert_published(&self, alert: &EventId) -> Result<(), StoreError> {
        self.hook(Call::MarkAlertPublished).await?;
        self.inner.mark_alert_published(alert).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.hook(Call::Ping).await?;
        self.inner.ping().await
    }
}
