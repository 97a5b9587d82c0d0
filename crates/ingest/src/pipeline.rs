//! From a decoded event to its durable effects: the budget engine in the store, then the
//! outbound events on the backplane. Transport-independent: the AMQP consumer and
//! `POST /v1/events` both drive it.
//!
//! Every step is idempotent, so processing the same message again (a redelivery after a crash,
//! a second consumer) changes nothing: the backplane drops events whose id it has seen, the
//! store fires each (key, period, threshold) once and keeps returning a fired alert until it is
//! marked published.
use crate::envelope::{self, MessageMeta};
use herald_backplane::{BackplaneError, Published, SharedBackplane};
use herald_domain::budget::SpendFacts;
use herald_domain::forecast::RateConfig;
use herald_domain::key_change::VirtualKeyChanged;
use herald_domain::task::{TaskEvent, TaskState};
use herald_domain::thresholds::Thresholds;
use herald_domain::vocabulary::{AudienceSet, ChangeAction, Navigation, Reach};
use herald_domain::{
    Audience, EventId, InboundEvent, InboundKind, Invalid, KeyId, KeyRef, Outbound, OutboundEvent,
    SpendUpdated, VirtualKey,
};
use herald_store::{SharedStore, SpendRules, StoreError};
use herald_telemetry::metrics;
use herald_telemetry::trace;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The metric label of an audience: its kind, never a key id (bounded cardinality).
fn audience_kind(a: Audience) -> &'static str {
    match a {
        Audience::Key(_) => "key",
        Audience::Global => "global",
        Audience::Admin => "admin",
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Used for keys without their own threshold list.
    pub thresholds: Thresholds,
    /// Burn rate, trend, forecast and spike settings; `None`: `HERALD_SPEND_FORECAST=off`.
    pub rates: Option<RateConfig>,
}

impl Default for PipelineConfig {
    /// The node's defaults: the default thresholds, spend intelligence on.
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            rates: Some(RateConfig::default()),
        }
    }
}

/// Why a message was not processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The message is bad and always will be: dead-letter it (HTTP: 400).
    #[error("rejected: {0}")]
    Rejected(Invalid),
    /// A dependency is down: keep the message and retry (HTTP: 503).
    #[error("dependency unavailable: {0}")]
    Transient(#[source] Outage),
    /// Not processable yet, e.g. a task event that arrives before the event naming its key:
    /// retry it later, a bounded number of times, then dead-letter it with this reason.
    #[error("deferred: {0}")]
    Deferred(Invalid),
}

/// The dependency that is down, with its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Outage {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Backplane(BackplaneError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::Unavailable(_) => Self::Transient(Outage::Store(e)),
            // Retrying cannot resolve a contradiction in the data; dead-lettering keeps the
            // message for an operator instead of stalling the queue behind it.
            StoreError::Conflict(m) => Self::Rejected(Invalid::new(format!("conflict: {m}"))),
        }
    }
}

impl From<BackplaneError> for Failure {
    fn from(e: BackplaneError) -> Self {
        Self::Transient(Outage::Backplane(e))
    }
}

/// What processing one event did, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub event_id: EventId,
    /// The inbound type, e.g. `SpendUpdated`.
    pub event_type: &'static str,
    pub key_id: Option<KeyId>,
    /// Outbound events handed to the backplane (including alerts; repeats it dropped count
    /// too, since the pipeline cannot tell them apart).
    pub published: usize,
    /// Budget alerts among `published`.
    pub alerts: usize,
    /// The event's id was already published to every audience of its own outbound events
    /// (a repeat within the backplane's dedupe window): nothing new was sent to anyone.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Pipeline {
    parts: Arc<Parts>,
}

struct Parts {
    rules: SpendRules,
    store: SharedStore,
    backplane: SharedBackplane,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, store: SharedStore, backplane: SharedBackplane) -> Self {
        Self {
            parts: Arc::new(Parts {
                rules: SpendRules {
                    thresholds: config.thresholds,
                    rates: config.rates,
                },
                store,
                backplane,
            }),
        }
    }

    /// Decodes one message and processes it.
    pub async fn process(&self, body: &[u8], meta: &MessageMeta) -> Result<Processed, Failure> {
        let ev = envelope::decode(body, meta).map_err(Failure::Rejected)?;
        self.process_event(ev).await
    }

    /// Processes an already decoded event. `Ok` means its effects are durable.
    ///
    /// Runs in a `herald.consume` span, a child of the message's `traceparent` (or a new
    /// root); the outbound events carry this span's context through the backplane, so the
    /// gateway's delivery spans join the same trace. With tracing off there is no span and the
    /// inbound `traceparent` (if any) passes through unchanged.
    pub async fn process_event(&self, mut ev: InboundEvent) -> Result<Processed, Failure> {
        let span = trace::child_of(ev.traceparent.as_deref(), || {
            tracing::info_span!(
                "herald.consume",
                otel.kind = "consumer",
                herald.event_id = ev.id.as_str(),
                herald.event_type = ev.kind.type_name(),
                herald.key_id = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            )
        });
        if let Some(tp) = trace::traceparent(&span) {
            ev.traceparent = Some(tp);
        }
        let result = self.dispatch(ev).instrument(span.clone()).await;
        let _in_span = span.enter();
        match &result {
            Ok(p) => {
                if let Some(k) = p.key_id {
                    span.record("herald.key_id", k.get());
                }
                tracing::debug!(event_id = %p.event_id, event_type = p.event_type, key_id = p.key_id.map(|k| k.get()), published = p.published, alerts = p.alerts, "processed");
            }
            Err(e) => trace::fail(&span, e),
        }
        result
    }

    /// Publishes one event to its audiences in a `herald.publish` span, timed and counted.
    async fn publish(
        &self,
        audiences: &[Audience],
        event: &OutboundEvent,
    ) -> Result<Published, Failure> {
        let span = trace::child_of(event.traceparent.as_deref(), || {
            tracing::info_span!(
                "herald.publish",
                otel.kind = "producer",
                herald.event_id = event.event_id.as_str(),
                herald.event = event.name.name(),
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            )
        });
        let started = Instant::now();
        let result = self
            .parts
            .backplane
            .publish(audiences, event)
            .instrument(span.clone())
            .await;
        let m = metrics();
        m.backplane_publish_seconds.observe(started.elapsed());
        match &result {
            Ok(_) => {
                for a in audiences {
                    m.published.with(audience_kind(*a)).inc();
                }
            }
            Err(e) => trace::fail(&span, e),
        }
        Ok(result?)
    }

    async fn dispatch(&self, ev: InboundEvent) -> Result<Processed, Failure> {
        match &ev.kind {
            InboundKind::SpendUpdated(s) => self.spend_updated(&ev, s).await,
            InboundKind::ProviderHealthChanged(p) => {
                let events = [
                    OutboundEvent::with_fields(
                        &ev,
                        Outbound::ProviderHealthChanged,
                        None,
                        &p.fields,
                    ),
                    OutboundEvent::navigation(
                        &ev,
                        Navigation::Provider,
                        ChangeAction::Updated,
                        &p.fields,
                    ),
                ];
                self.publish_all(&ev, None, &events).await
            }
            InboundKind::ModelsDiscovered(m) => {
                let events = [OutboundEvent::with_fields(
                    &ev,
                    Outbound::ModelsDiscovered,
                    None,
                    &m.fields,
                )];
                self.publish_all(&ev, None, &events).await
            }
            InboundKind::ModelMappingChanged(m) => {
                let events = [OutboundEvent::navigation(
                    &ev,
                    Navigation::ModelMapping,
                    m.action,
                    &m.fields,
                )];
                self.publish_all(&ev, None, &events).await
            }
            InboundKind::VirtualKey(k) => self.key_changed(&ev, k).await,
            InboundKind::Task(t) => self.task_event(&ev, t).await,
        }
    }

    /// Where `event`, produced by `ev`, goes: the vocabulary says, for the key `owner`.
    fn audiences(ev: &InboundEvent, event: &OutboundEvent, owner: Option<KeyId>) -> AudienceSet {
        let reach = ev.kind.spec().reach(event.name).unwrap_or(Reach::AdminOnly);
        reach.audiences(owner)
    }

    /// A task event goes to its owner's key only: the owner is named by the event or learnt
    /// by the task registry from an earlier event of the same task. An event whose owner is
    /// unknown is refused (dead-lettered with the reason), never sent to anyone else.
    async fn task_event(&self, ev: &InboundEvent, t: &TaskEvent) -> Result<Processed, Failure> {
        let backplane = &self.parts.backplane;
        let previous = backplane.task(&t.task_id).await?;
        let owner = match &t.key {
            Some(KeyRef::Id(id)) => *id,
            Some(KeyRef::Hash(h)) => match self.parts.store.key_by_hash(h).await? {
                Some(k) => k.id,
                None => return Err(Failure::Rejected(Invalid::new("unknown key hash"))),
            },
            None => match &previous {
                Some(p) => p.virtual_key_id,
                None => {
                    return Err(Failure::Deferred(Invalid::new(format!(
                        "unknown task owner for task {}",
                        t.task_id
                    ))));
                }
            },
        };
        if previous.as_ref().is_some_and(|p| p.virtual_key_id != owner) {
            return Err(Failure::Rejected(Invalid::new(format!(
                "task {} belongs to another key",
                t.task_id
            ))));
        }
        let state = TaskState::of(t, owner, ev.source_time, previous.as_ref());
        backplane.record_task(&state).await?;
        let event = OutboundEvent::task(ev, t, &state);
        self.publish_all(ev, Some(owner), &[event]).await
    }

    /// Publishes each event to the audiences the vocabulary names for it.
    async fn publish_all(
        &self,
        ev: &InboundEvent,
        key_id: Option<KeyId>,
        events: &[OutboundEvent],
    ) -> Result<Processed, Failure> {
        let mut done = Published::default();
        for e in events {
            done = done
                + self
                    .publish(Self::audiences(ev, e, key_id).as_slice(), e)
                    .await?;
        }
        Ok(Processed {
            event_id: ev.id.clone(),
            event_type: ev.kind.type_name(),
            key_id,
            published: events.len(),
            alerts: 0,
            duplicate: done.is_repeat(),
        })
    }

    /// Keeps the key store current, then tells the key's connections (which re-check their
    /// key: a disabled or deleted key's connections close) and the admins.
    async fn key_changed(
        &self,
        ev: &InboundEvent,
        k: &VirtualKeyChanged,
    ) -> Result<Processed, Failure> {
        let store = &self.parts.store;
        match k.action {
            ChangeAction::Deleted => {
                store.delete_key(k.key_id).await?;
            }
            ChangeAction::Created | ChangeAction::Updated => {
                let existing = store.key_by_id(k.key_id).await?;
                let key = match (existing, &k.key_hash) {
                    (Some(mut key), hash) => {
                        if let Some(h) = hash {
                            key.key_hash = h.clone();
                        }
                        Some(key)
                    }
                    (None, Some(h)) => Some(VirtualKey::new(
                        k.key_id,
                        h.clone(),
                        format!("key {}", k.key_id),
                    )),
                    // An update of a key this store never saw, without its hash: nothing to
                    // authenticate against, but clients of the key still hear about it.
                    (None, None) => None,
                };
                if let Some(mut key) = key {
                    if let Some(name) = &k.key_name {
                        key.name = name.clone();
                    }
                    if let Some(enabled) = k.is_enabled {
                        key.enabled = enabled;
                    }
                    if k.budget.is_some() || k.action == ChangeAction::Created {
                        key.budget = k.budget.or(key.budget);
                    }
                    if let Some(period) = k.budget_period {
                        key.budget_period = period;
                    }
                    if k.expires_at.is_some() {
                        key.expires_at = k.expires_at;
                    }
                    if let Some(admin) = k.is_admin {
                        key.is_admin = admin;
                    }
                    if let Some(spikes) = k.spike_alerts {
                        key.spike_alerts = spikes;
                    }
                    store.put_key(&key).await?;
                }
            }
        }
        // The key's own event; navigation goes to admins only (other keys must not learn
        // about this key): the vocabulary's reach for each.
        let events = [
            OutboundEvent::with_fields(ev, ev.kind.spec().own_event(), Some(k.key_id), &k.fields),
            OutboundEvent::navigation(ev, Navigation::VirtualKey, k.action, &k.fields),
        ];
        self.publish_all(ev, Some(k.key_id), &events).await
    }

    async fn spend_updated(
        &self,
        ev: &InboundEvent,
        s: &SpendUpdated,
    ) -> Result<Processed, Failure> {
        let store = &self.parts.store;
        // A key named by hash is looked up first (rare); by id, the store does the lookup,
        // the total and the budget in one call.
        let key_id = match &s.key {
            KeyRef::Id(id) => *id,
            KeyRef::Hash(h) => match store.key_by_hash(h).await? {
                Some(k) => k.id,
                None => return Err(Failure::Rejected(Invalid::new("unknown key hash"))),
            },
        };
        let facts = SpendFacts {
            key_id,
            event_id: ev.id.clone(),
            source_time: ev.source_time,
            total_spend: s.new_total_spend,
            budget: s.budget,
            period: s.budget_period,
            period_start: s.period_start,
            amount: s.amount,
            model: s.model.clone(),
            provider: s.provider.clone(),
            request_id: s.request_id.clone(),
        };
        let outcome = store.observe_spend(&facts, &self.parts.rules).await?;
        let budget = facts.budget(outcome.key.as_ref());
        let pending = outcome.pending;

        let update = OutboundEvent::spend_update(ev, s, key_id, budget, outcome.rate.as_ref());
        let done = self
            .publish(
                Self::audiences(ev, &update, Some(key_id)).as_slice(),
                &update,
            )
            .await?;
        let mut alerts = 0;
        for alert in pending {
            let mut event = alert.event;
            if event.traceparent.is_none() {
                event.traceparent = ev.traceparent.clone();
            }
            // Alerts belong to the key they name (pending may hold an earlier, unconfirmed one).
            let owner = event.key_id.or(Some(key_id));
            self.publish(Self::audiences(ev, &event, owner).as_slice(), &event)
                .await?;
            store.mark_alert_published(&event.event_id).await?;
            metrics().alerts_fired.with(&alert.label).inc();
            alerts += 1;
        }
        Ok(Processed {
            event_id: ev.id.clone(),
            event_type: ev.kind.type_name(),
            key_id: Some(key_id),
            published: 1 + alerts,
            alerts,
            duplicate: done.is_repeat(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_backplane::{Backplane, Mailbox, MailboxReceiver, MemoryBackplane, Received};
    use herald_domain::{KeyHash, VirtualKey};
    use herald_store::hooked::{Call, Hooked};
    use herald_store::{MemoryStore, Store};
    use rust_decimal::Decimal;
    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    struct Fixture {
        store: Arc<MemoryStore>,
        backplane: Arc<MemoryBackplane>,
        pipeline: Pipeline,
    }

    fn fixture() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let backplane = Arc::new(MemoryBackplane::new(1000));
        let pipeline = Pipeline::new(PipelineConfig::default(), store.clone(), backplane.clone());
        Fixture {
            store,
            backplane,
            pipeline,
        }
    }

    async fn listen(
        bp: &MemoryBackplane,
        a: Audience,
    ) -> (MailboxReceiver, herald_backplane::Subscription) {
        let (mb, rx) = Mailbox::new(1 << 20);
        let sub = bp.subscribe(a, mb).await.unwrap();
        (rx, sub)
    }

    fn drain(rx: &mut MailboxReceiver) -> Vec<(String, String)> {
        let mut out = vec![];
        while let Some(Received::Delivery(d)) = rx.try_recv() {
            out.push((
                d.event.name.name().to_owned(),
                d.event.payload.get().to_owned(),
            ));
        }
        out
    }

    async fn key(store: &MemoryStore, id: i64, budget: Option<&str>) -> VirtualKey {
        let mut k = VirtualKey::new(
            KeyId::new(id).unwrap(),
            KeyHash::of_raw(&format!("condt_{id}")),
            "k",
        );
        k.budget = budget.map(d);
        store.put_key(&k).await.unwrap();
        k
    }

    fn mt(id: &str, body: &str) -> Vec<u8> {
        format!(
            r#"{{"messageId":"{id}","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],"message":{body},"sentTime":"2026-01-02T03:04:05Z"}}"#
        )
        .into_bytes()
    }

    fn meta() -> MessageMeta {
        MessageMeta::default()
    }

    fn typed(id: &str, event_type: &str, body: &str) -> Vec<u8> {
        format!(
            r#"{{"messageId":"{id}","messageType":["urn:message:ConduitLLM.Core.Events:{event_type}"],"message":{body},"sentTime":"2026-01-02T03:04:05Z"}}"#
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn global_events_go_to_global_and_admin_never_to_a_key() {
        let f = fixture();
        let (mut global, _g) = listen(&f.backplane, Audience::Global).await;
        let (mut admin, _a) = listen(&f.backplane, Audience::Admin).await;
        let (mut own, _k) = listen(&f.backplane, Audience::Key(KeyId::new(1).unwrap())).await;
        let health = typed(
            "ph-1",
            "ProviderHealthChanged",
            r#"{"ProviderId":3,"Status":"Unhealthy","Error":"timeout"}"#,
        );
        let models = typed(
            "md-1",
            "ModelCapabilitiesDiscovered",
            r#"{"providerId":3,"models":["gpt-4o"]}"#,
        );
        let mapping = typed(
            "mm-1",
            "ModelMappingChanged",
            r#"{"mappingId":5,"modelAlias":"fast","providerId":3,"isEnabled":true,"changeType":"Created"}"#,
        );
        for m in [&health, &models, &mapping] {
            f.pipeline.process(m, &meta()).await.unwrap();
        }
        let names: Vec<String> = drain(&mut global).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "ProviderHealthChanged",
                "NavigationStateUpdated",
                "ModelsDiscovered",
                "NavigationStateUpdated"
            ]
        );
        assert_eq!(drain(&mut admin).len(), 4);
        assert!(drain(&mut own).is_empty());
    }

    #[tokio::test]
    async fn key_lifecycle_events_keep_the_store_current_and_reach_only_that_key() {
        let f = fixture();
        let hash = KeyHash::of_raw("condt_lifecycle");
        let (mut own, _k) = listen(&f.backplane, Audience::Key(KeyId::new(4).unwrap())).await;
        let (mut other, _o) = listen(&f.backplane, Audience::Key(KeyId::new(5).unwrap())).await;
        let (mut global, _g) = listen(&f.backplane, Audience::Global).await;
        let created = typed(
            "kc-1",
            "VirtualKeyCreated",
            &format!(
                r#"{{"KeyId":4,"KeyHash":"{}","KeyName":"ci","Budget":25.00,"BudgetPeriod":"Monthly"}}"#,
                hash.as_str()
            ),
        );
        f.pipeline.process(&created, &meta()).await.unwrap();
        let k = f.store.key_by_hash(&hash).await.unwrap().expect("stored");
        assert_eq!(
            (
                k.id.get(),
                k.name.as_str(),
                k.budget.map(|b| b.to_string()),
                k.enabled
            ),
            (4, "ci", Some("25.00".into()), true)
        );
        let disabled = typed(
            "ku-1",
            "VirtualKeyUpdated",
            r#"{"keyId":4,"isEnabled":false,"changedProperties":["IsEnabled"]}"#,
        );
        f.pipeline.process(&disabled, &meta()).await.unwrap();
        let k = f
            .store
            .key_by_id(KeyId::new(4).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(!k.enabled);
        assert_eq!(
            k.budget.map(|b| b.to_string()),
            Some("25.00".into()),
            "an update keeps what it does not name"
        );
        f.pipeline
            .process(
                &typed("kd-1", "VirtualKeyDeleted", r#"{"keyId":4}"#),
                &meta(),
            )
            .await
            .unwrap();
        assert!(
            f.store
                .key_by_id(KeyId::new(4).unwrap())
                .await
                .unwrap()
                .is_none()
        );
        let names: Vec<String> = drain(&mut own).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "VirtualKeyCreated",
                "VirtualKeyUpdated",
                "VirtualKeyDeleted"
            ]
        );
        assert!(
            drain(&mut other).is_empty() && drain(&mut global).is_empty(),
            "no other key or global listener hears of it"
        );
    }

    #[tokio::test]
    async fn task_events_reach_their_owner_through_the_registry_and_unknown_owners_wait() {
        let f = fixture();
        let (mut own, _k) = listen(&f.backplane, Audience::Key(KeyId::new(3).unwrap())).await;
        let (mut other, _o) = listen(&f.backplane, Audience::Key(KeyId::new(4).unwrap())).await;
        // No owner named and none known: deferred (retried later), delivered to no one.
        let orphan = typed(
            "t-0",
            "ImageGenerationProgress",
            r#"{"taskId":"orphan","progress":10}"#,
        );
        match f.pipeline.process(&orphan, &meta()).await {
            Err(Failure::Deferred(r)) => assert!(r.0.contains("unknown task owner"), "{r}"),
            other => panic!("{other:?}"),
        }
        // The request names the key; later events of the task do not need to.
        let requested = typed(
            "v-1",
            "VideoGenerationRequested",
            r#"{"RequestId":"vid-1","VirtualKeyId":3,"Prompt":"a cat"}"#,
        );
        let progress = typed(
            "v-2",
            "VideoGenerationProgress",
            r#"{"requestId":"vid-1","progress":40,"message":"rendering"}"#,
        );
        let done = typed(
            "v-3",
            "VideoGenerationCompleted",
            r#"{"requestId":"vid-1","videoUrl":"https://cdn/v.mp4"}"#,
        );
        let late = typed(
            "v-4",
            "VideoGenerationProgress",
            r#"{"requestId":"vid-1","progress":90}"#,
        );
        for m in [&requested, &progress, &done, &late] {
            f.pipeline.process(m, &meta()).await.unwrap();
        }
        let got = drain(&mut own);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "VideoGenerationRequested",
                "VideoGenerationProgress",
                "VideoGenerationCompleted",
                "VideoGenerationProgress"
            ]
        );
        assert!(
            got[1].1.contains(r#""progress":40"#) && got[1].1.contains(r#""status":"running""#),
            "{}",
            got[1].1
        );
        assert!(
            got[2].1.contains(r#""progress":100"#)
                && got[2].1.contains(r#""videoUrl":"https://cdn/v.mp4""#),
            "{}",
            got[2].1
        );
        assert!(drain(&mut other).is_empty());
        let state = f.backplane.task("vid-1").await.unwrap().unwrap();
        assert_eq!(
            (
                state.status.as_str(),
                state.progress,
                state.virtual_key_id.get()
            ),
            ("completed", 100, 3),
            "a late progress event does not undo completion"
        );
        // Another key cannot take over the task.
        let hijack = typed(
            "v-5",
            "TaskProgress",
            r#"{"taskId":"vid-1","virtualKeyId":4,"taskType":"video","progress":50}"#,
        );
        assert!(matches!(
            f.pipeline.process(&hijack, &meta()).await,
            Err(Failure::Rejected(_))
        ));
        assert!(drain(&mut other).is_empty());
    }

    #[tokio::test]
    async fn spend_update_payload_is_exact() {
        let f = fixture();
        key(&f.store, 7, Some("50.00")).await;
        let (mut rx, _s) = listen(&f.backplane, Audience::Key(KeyId::new(7).unwrap())).await;
        let (mut admin, _a) = listen(&f.backplane, Audience::Admin).await;
        let p = f
            .pipeline
            .process(
                &mt(
                    "m-1",
                    r#"{"keyId":7,"amount":0.000123,"newTotalSpend":12.50,"requestId":"r1"}"#,
                ),
                &meta(),
            )
            .await
            .unwrap();
        assert_eq!(p.event_id.as_str(), "m-1");
        assert_eq!((p.published, p.alerts), (1, 0));
        assert_eq!(p.key_id, KeyId::new(7).ok());
        let got = drain(&mut rx);
        assert_eq!(
            got,
            vec![(
                "SpendUpdate".to_owned(),
                r#"{"eventId":"m-1","timestamp":"2026-01-02T03:04:05Z","virtualKeyId":7,"newSpend":0.000123,"totalSpend":12.50,"budget":50.00,"budgetRemaining":37.5,"budgetPercentage":25,"requestId":"r1","trend":"stable","burnRatePerHour":0.001736}"#.to_owned()
            )]
        );
        assert_eq!(drain(&mut admin), got);
        let stored = f
            .store
            .key_by_id(KeyId::new(7).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.current_spend.to_string(), "12.50");
    }

    #[tokio::test]
    async fn unknown_key_id_still_delivers_and_event_budget_wins() {
        let f = fixture();
        let (mut rx, _s) = listen(&f.backplane, Audience::Key(KeyId::new(99).unwrap())).await;
        let p = f
            .pipeline
            .process(
                &mt(
                    "m-1",
                    r#"{"keyId":99,"amount":1,"newTotalSpend":60,"budget":100}"#,
                ),
                &meta(),
            )
            .await
            .unwrap();
        assert_eq!((p.published, p.alerts), (2, 1));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "SpendUpdate");
        assert_eq!(got[1].0, "BudgetAlert");
        assert!(
            got[1].1.contains(r#""alertType":"budget_50_percent""#),
            "{}",
            got[1].1
        );
        assert!(got[1].1.contains(r#""sourceEventId":"m-1""#));
    }

    #[tokio::test]
    async fn same_message_twice_fires_once() {
        let f = fixture();
        key(&f.store, 1, Some("100")).await;
        let (mut rx, _s) = listen(&f.backplane, Audience::Key(KeyId::new(1).unwrap())).await;
        let body = mt("m-1", r#"{"keyId":1,"amount":80,"newTotalSpend":80}"#);
        let first = f.pipeline.process(&body, &meta()).await.unwrap();
        assert!(!first.duplicate);
        let again = f.pipeline.process(&body, &meta()).await.unwrap();
        assert_eq!(again.alerts, 0);
        assert!(again.duplicate, "the repeat is reported as a duplicate");
        let names: Vec<_> = drain(&mut rx).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["SpendUpdate", "BudgetAlert"]);
    }

    #[tokio::test]
    async fn a_jump_across_thresholds_fires_one_alert() {
        let f = fixture();
        key(&f.store, 1, Some("10")).await;
        let (mut rx, _s) = listen(&f.backplane, Audience::Admin).await;
        let p = f
            .pipeline
            .process(
                &mt("m-1", r#"{"keyId":1,"amount":9.5,"newTotalSpend":9.5}"#),
                &meta(),
            )
            .await
            .unwrap();
        assert_eq!(p.alerts, 1);
        let got = drain(&mut rx);
        let alerts: Vec<_> = got.iter().filter(|(n, _)| n == "BudgetAlert").collect();
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].1.contains(r#""threshold":90"#), "{}", alerts[0].1);
        assert!(alerts[0].1.contains(r#""severity":"critical""#));
        // 75 and 50 were marked: a later, higher spend below 100 fires nothing.
        let p = f
            .pipeline
            .process(
                &mt("m-2", r#"{"keyId":1,"amount":0.1,"newTotalSpend":9.6}"#),
                &meta(),
            )
            .await
            .unwrap();
        assert_eq!(p.alerts, 0);
    }

    #[tokio::test]
    async fn per_key_thresholds_override_the_default() {
        let f = fixture();
        let mut k = key(&f.store, 3, Some("100")).await;
        k.alert_thresholds = Some(Thresholds::from_list(vec![20]).unwrap());
        f.store.put_key(&k).await.unwrap();
        let p = f
            .pipeline
            .process(
                &mt("m-1", r#"{"keyId":3,"amount":25,"newTotalSpend":25}"#),
                &meta(),
            )
            .await
            .unwrap();
        assert_eq!(p.alerts, 1);
    }

    #[tokio::test]
    async fn concurrent_pipelines_on_one_key_fire_once() {
        let f = fixture();
        key(&f.store, 1, Some("100")).await;
        let (mut rx, _s) = listen(&f.backplane, Audience::Key(KeyId::new(1).unwrap())).await;
        let other = Pipeline::new(
            PipelineConfig::default(),
            f.store.clone(),
            f.backplane.clone(),
        );
        let mut tasks = vec![];
        for i in 0..16 {
            let p = if i % 2 == 0 {
                f.pipeline.clone()
            } else {
                other.clone()
            };
            let body = mt(
                &format!("m-{i}"),
                r#"{"keyId":1,"amount":1,"newTotalSpend":95}"#,
            );
            tasks.push(tokio::spawn(async move { p.process(&body, &meta()).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let got = drain(&mut rx);
        assert_eq!(got.iter().filter(|(n, _)| n == "SpendUpdate").count(), 16);
        assert_eq!(got.iter().filter(|(n, _)| n == "BudgetAlert").count(), 1);
    }

    #[tokio::test]
    async fn key_by_hash_and_unknown_hash() {
        let f = fixture();
        let k = key(&f.store, 5, None).await;
        let (mut rx, _s) = listen(&f.backplane, Audience::Key(KeyId::new(5).unwrap())).await;
        let body = mt(
            "m-1",
            &format!(
                r#"{{"virtualKeyId":"{}","amount":1,"newTotalSpend":2}}"#,
                k.key_hash
            ),
        );
        let p = f.pipeline.process(&body, &meta()).await.unwrap();
        assert_eq!(p.key_id, Some(k.id));
        assert_eq!(drain(&mut rx).len(), 1);
        let unknown = KeyHash::of_raw("nobody");
        let body = mt(
            "m-2",
            &format!(r#"{{"keyId":"{unknown}","amount":1,"newTotalSpend":2}}"#),
        );
        let r = f.pipeline.process(&body, &meta()).await;
        assert!(
            matches!(&r, Err(Failure::Rejected(i)) if i.0 == "unknown key hash"),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_rejected() {
        let f = fixture();
        for body in [
            &b"nope"[..],
            &mt("m", r#"{"keyId":1,"amount":-1,"newTotalSpend":1}"#),
        ] {
            assert!(matches!(
                f.pipeline.process(body, &meta()).await,
                Err(Failure::Rejected(_))
            ));
        }
    }

    /// A store whose `fail_call`-th call (1-based, counted in `calls`; adding and deleting
    /// keys not counted) fails as unavailable.
    fn flaky(calls: Arc<AtomicUsize>, fail_call: Arc<AtomicUsize>) -> Hooked {
        Hooked::new(move |call| {
            let counted = !matches!(call, Call::PutKey(_) | Call::DeleteKey(_));
            let failing = counted
                && calls.fetch_add(1, Ordering::SeqCst) + 1 == fail_call.load(Ordering::SeqCst);
            std::future::ready(if failing {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn store_outage_is_transient_and_a_retry_completes_the_work() {
        let (calls, fail_call) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let store = Arc::new(flaky(calls.clone(), fail_call.clone()));
        let backplane = Arc::new(MemoryBackplane::new(100));
        let p = Pipeline::new(PipelineConfig::default(), store, backplane.clone());
        let (mut rx, _s) = listen(&backplane, Audience::Admin).await;
        let body = mt(
            "m-1",
            r#"{"keyId":1,"amount":1,"newTotalSpend":60,"budget":100}"#,
        );
        // Fails at each step in turn: key lookup, record, evaluate, and after publishing (mark).
        for n in 1..=4 {
            calls.store(0, Ordering::SeqCst);
            fail_call.store(n, Ordering::SeqCst);
            let r = p.process(&body, &meta()).await;
            assert!(
                matches!(&r, Err(Failure::Transient(m)) if m.to_string().contains("down")),
                "step {n}: {r:?}"
            );
        }
        fail_call.store(0, Ordering::SeqCst);
        let done = p.process(&body, &meta()).await.unwrap();
        // The alert went out before the failed mark, so it is still pending and handed to the
        // backplane again; the backplane drops the repeat.
        assert_eq!(done.alerts, 1);
        let names: Vec<_> = drain(&mut rx).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["SpendUpdate", "BudgetAlert"]);
    }
}
