//! Outbound events: what travels through the backplane to clients, built once per event.
use crate::budget::BudgetAlert;
use crate::fields::format_time;
use crate::forecast::{RateView, SpendAlert, SpendAlertKind};
use crate::ids::{EventId, KeyId};
use crate::inbound::{InboundEvent, SpendUpdated};
use crate::money;
use crate::task::{TaskEvent, TaskState};
use crate::vocabulary::{ChangeAction, Navigation, Outbound};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What travels through the backplane: one event for one or more audiences. `payload` is the
/// client-facing argument object, already serialized, without `cursor` (the gateway adds it per
/// connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundEvent {
    pub event_id: EventId,
    /// The hub method clients receive, e.g. `SpendUpdate`.
    pub name: Outbound,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub payload: Box<RawValue>,
    /// Task events: what Conduit's positional methods on `/hubs/tasks` need, rendered once here
    /// so no connection parses the payload again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ConduitTask>,
    /// The event's binary wire form (the gateway's MessagePack encoding of `payload` and of
    /// the task's positional arguments), made lazily the first time a connection of this node
    /// needs it and shared by all of them; never serialized.
    #[serde(skip)]
    pub binary: std::sync::OnceLock<BinaryForm>,
}

/// A binary encoding of an event's client-facing parts, as one gateway node renders it once.
/// The domain only keeps it; what the bytes mean is the gateway's business.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BinaryForm {
    /// The encoded entries of the payload object (without a map header), or the whole
    /// encoded value when the payload is not an object.
    pub payload: Vec<u8>,
    /// The number of entries in `payload` when the payload is an object.
    pub payload_fields: Option<u32>,
    /// The encoded positional arguments (an array) of a task event's Conduit method.
    pub args: Option<Vec<u8>>,
}

/// The top-level fields of `name`'s client object that are money (a `Decimal` in the code):
/// the fields whose digits `docs/events.md` ("Money and numbers") promises to keep. Encodings
/// that have no exact decimal number (MessagePack) carry these as text, whatever their value.
pub fn decimal_fields(name: Outbound) -> &'static [&'static str] {
    match name {
        Outbound::SpendUpdate => &[
            "newSpend",
            "totalSpend",
            "budget",
            "budgetRemaining",
            "budgetPercentage",
        ],
        Outbound::BudgetAlert => &["percentage", "currentSpend", "budget", "remaining"],
        _ => &[],
    }
}

/// A task event as Conduit's positional methods carry it: `TaskProgress(taskId, progress,
/// message)`, `TaskCompleted(taskId, result)`, `TaskFailed(taskId, error, isRetryable)`,
/// `TaskCancelled(taskId, reason)`. The method follows from the event's phase
/// ([`crate::vocabulary::TaskPhase::conduit_method`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConduitTask {
    pub task_id: String,
    /// The positional arguments, a JSON array; absent for a phase without a method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Box<RawValue>>,
}

impl ConduitTask {
    /// From the client object of a task event (`taskId`, `status`, `progress`, ...).
    fn of(name: Outbound, payload: &Map<String, Value>) -> Option<Self> {
        let (_, phase) = name.task()?;
        let task_id = payload.get("taskId")?.as_str()?.to_owned();
        let id = Value::String(task_id.clone());
        let field = |k: &str| payload.get(k).cloned().unwrap_or(Value::Null);
        let args = phase.conduit_method().map(|method| match method {
            Outbound::TaskCompleted => vec![id, field("result")],
            Outbound::TaskFailed => vec![
                id,
                field("error"),
                payload
                    .get("isRetryable")
                    .cloned()
                    .unwrap_or(Value::Bool(false)),
            ],
            Outbound::TaskCancelled => {
                let reason = ["reason", "message", "error"]
                    .iter()
                    .find_map(|k| payload.get(*k).filter(|v| !v.is_null()))
                    .cloned()
                    .unwrap_or(Value::Null);
                vec![id, reason]
            }
            _ => vec![id, field("progress"), field("message")],
        });
        Some(Self {
            task_id,
            args: args.and_then(|a| serde_json::value::to_raw_value(&a).ok()),
        })
    }
}
impl OutboundEvent {
    fn new<P: Serialize>(
        event_id: EventId,
        name: Outbound,
        key_id: Option<KeyId>,
        timestamp: DateTime<Utc>,
        traceparent: Option<String>,
        payload: &P,
    ) -> Self {
        // Serializing a struct of strings, decimals and numbers cannot fail.
        let payload = serde_json::value::to_raw_value(payload).unwrap_or_default();
        Self {
            event_id,
            name,
            key_id,
            timestamp,
            traceparent,
            payload,
            task: None,
            binary: std::sync::OnceLock::new(),
        }
    }

    /// Events written by an older Herald carry no [`ConduitTask`]: derive it from the payload,
    /// once per node, where the backplane decodes them.
    pub fn fill_in_task(&mut self) {
        if self.task.is_some() || self.name.task().is_none() {
            return;
        }
        if let Ok(payload) = serde_json::from_str::<Map<String, Value>>(self.payload.get()) {
            self.task = ConduitTask::of(self.name, &payload);
        }
    }

    /// An event whose client object is the inbound fields (camelCased) plus `eventId`,
    /// `timestamp` and, for a key's events, `virtualKeyId`.
    pub fn with_fields(
        ev: &InboundEvent,
        name: Outbound,
        key_id: Option<KeyId>,
        fields: &Map<String, Value>,
    ) -> Self {
        Self::fields_event(ev.id.clone(), ev, name, key_id, fields.clone())
    }

    /// `NavigationStateUpdated` (docs/events.md, section 4): `type`, `action`, `data`, `timestamp`. Its id is
    /// derived from the source event's, so a redelivery is the same event.
    pub fn navigation(
        ev: &InboundEvent,
        kind: Navigation,
        action: ChangeAction,
        data: &Map<String, Value>,
    ) -> Self {
        let mut payload = Map::new();
        payload.insert("type".into(), Value::String(kind.as_str().into()));
        payload.insert("action".into(), Value::String(action.as_str().into()));
        payload.insert("data".into(), Value::Object(data.clone()));
        let id = EventId::parse(&format!("{}:nav", ev.id)).unwrap_or_else(|_| ev.id.clone());
        Self::fields_event(id, ev, Outbound::NavigationStateUpdated, None, payload)
    }

    /// A task event of key `owner`: the inbound fields plus `taskId`, `taskType` and the task's
    /// `status` and `progress` as the registry now has them, with Conduit's positional form.
    pub fn task(ev: &InboundEvent, t: &TaskEvent, state: &TaskState) -> Self {
        let mut fields = t.fields.clone();
        fields.insert("taskId".into(), t.task_id.clone().into());
        fields.insert("taskType".into(), t.task_type.clone().into());
        fields.insert("status".into(), state.status.as_str().into());
        fields.insert("progress".into(), state.progress.into());
        let task = ConduitTask::of(t.event, &fields);
        let mut event = Self::fields_event(
            ev.id.clone(),
            ev,
            t.event,
            Some(state.virtual_key_id),
            fields,
        );
        event.task = task;
        event
    }

    fn fields_event(
        id: EventId,
        ev: &InboundEvent,
        name: Outbound,
        key_id: Option<KeyId>,
        mut payload: Map<String, Value>,
    ) -> Self {
        payload.insert("eventId".into(), Value::String(id.to_string()));
        payload.insert(
            "timestamp".into(),
            Value::String(format_time(ev.source_time)),
        );
        match key_id {
            Some(k) => payload.insert("virtualKeyId".into(), Value::from(k.get())),
            None => payload.remove("virtualKeyId"),
        };
        Self::new(
            id,
            name,
            key_id,
            ev.source_time,
            ev.traceparent.clone(),
            &payload,
        )
    }

    /// `SpendUpdate` (docs/events.md, section 1) for a SpendUpdated of key `key_id`, with the effective budget.
    pub fn spend_update(
        ev: &InboundEvent,
        s: &SpendUpdated,
        key_id: KeyId,
        budget: Option<Decimal>,
        rate: Option<&RateView>,
    ) -> Self {
        let budget = budget.filter(|b| *b > Decimal::ZERO);
        let payload = SpendUpdatePayload {
            event_id: &ev.id,
            timestamp: format_time(ev.source_time),
            virtual_key_id: key_id,
            new_spend: s.amount,
            total_spend: s.new_total_spend,
            budget,
            budget_remaining: budget.map(|b| money::remaining(b, s.new_total_spend)),
            budget_percentage: budget
                .and_then(|b| money::utilization_percent(s.new_total_spend, b)),
            model: s.model.as_deref(),
            provider: s.provider.as_deref(),
            request_id: s.request_id.as_deref(),
            trend: rate.map(|r| r.trend.as_str()),
            burn_rate_per_hour: rate.map(|r| r.burn_rate_per_hour),
        };
        Self::new(
            ev.id.clone(),
            Outbound::SpendUpdate,
            Some(key_id),
            ev.source_time,
            ev.traceparent.clone(),
            &payload,
        )
    }

    /// `BudgetAlert` (docs/events.md, "Budget alerts").
    pub fn budget_alert(a: &BudgetAlert, traceparent: Option<String>) -> Self {
        let payload = BudgetAlertPayload {
            event_id: &a.event_id,
            timestamp: format_time(a.timestamp),
            virtual_key_id: a.key_id,
            alert_type: &a.alert_type,
            threshold: a.threshold,
            percentage: a.percentage,
            current_spend: a.current_spend,
            budget: a.budget,
            remaining: a.remaining,
            severity: a.severity.as_str(),
            message: &a.message,
            // A total budget has no period; its internal start (the epoch) means nothing to clients.
            period_start: (a.period_start != DateTime::UNIX_EPOCH)
                .then(|| format_time(a.period_start)),
            period_end: a.period_end.map(format_time),
            source_event_id: &a.source_event_id,
        };
        Self::new(
            a.event_id.clone(),
            Outbound::BudgetAlert,
            Some(a.key_id),
            a.timestamp,
            traceparent,
            &payload,
        )
    }

    /// A forecast or spike alert as a `BudgetAlert` (docs/events.md, "Spend intelligence").
    pub fn spend_alert(a: &SpendAlert) -> Self {
        let figures = crate::forecast::budget_figures(a.current_spend, a.budget);
        let (projected, rate, baseline, factor, window, baseline_minutes) = match &a.kind {
            SpendAlertKind::Forecast {
                projected_exhaustion,
                rate_per_hour,
                window_minutes,
            } => (
                Some(format_time(*projected_exhaustion)),
                *rate_per_hour,
                None,
                None,
                *window_minutes,
                None,
            ),
            SpendAlertKind::Spike {
                rate_per_hour,
                baseline_per_hour,
                spike_factor,
                window_minutes,
                baseline_minutes,
            } => (
                None,
                *rate_per_hour,
                Some(*baseline_per_hour),
                Some(*spike_factor),
                *window_minutes,
                Some(*baseline_minutes),
            ),
        };
        let payload = SpendAlertPayload {
            event_id: &a.event_id,
            timestamp: format_time(a.timestamp),
            virtual_key_id: a.key_id,
            alert_type: a.alert_type(),
            percentage: figures.map(|(_, p)| p),
            current_spend: a.current_spend,
            budget: a.budget.filter(|_| figures.is_some()),
            remaining: figures.map(|(r, _)| r),
            severity: "warning",
            message: &a.message,
            period_start: (a.period_start != DateTime::UNIX_EPOCH)
                .then(|| format_time(a.period_start)),
            period_end: a.period_end.map(format_time),
            source_event_id: &a.source_event_id,
            projected_exhaustion: projected,
            burn_rate_per_hour: rate,
            baseline_per_hour: baseline,
            spike_factor: factor,
            window_minutes: window,
            baseline_minutes,
        };
        Self::new(
            a.event_id.clone(),
            Outbound::BudgetAlert,
            Some(a.key_id),
            a.timestamp,
            None,
            &payload,
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpendUpdatePayload<'a> {
    event_id: &'a EventId,
    timestamp: String,
    virtual_key_id: KeyId,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    new_spend: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    total_spend: Decimal,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    budget: Option<Decimal>,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    budget_remaining: Option<Decimal>,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    budget_percentage: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trend: Option<&'static str>,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    burn_rate_per_hour: Option<Decimal>,
}

/// A forecast or spike alert (docs/events.md, "Spend intelligence"): a `BudgetAlert` without
/// `threshold`, with the rate's figures.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpendAlertPayload<'a> {
    event_id: &'a EventId,
    timestamp: String,
    virtual_key_id: KeyId,
    alert_type: &'a str,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    percentage: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    current_spend: Decimal,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    budget: Option<Decimal>,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    remaining: Option<Decimal>,
    severity: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_end: Option<String>,
    source_event_id: &'a EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    projected_exhaustion: Option<String>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    burn_rate_per_hour: Decimal,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    baseline_per_hour: Option<Decimal>,
    #[serde(
        with = "rust_decimal::serde::arbitrary_precision_option",
        skip_serializing_if = "Option::is_none"
    )]
    spike_factor: Option<Decimal>,
    window_minutes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_minutes: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BudgetAlertPayload<'a> {
    event_id: &'a EventId,
    timestamp: String,
    virtual_key_id: KeyId,
    alert_type: &'a str,
    threshold: u32,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    percentage: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    current_spend: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    budget: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    remaining: Decimal,
    severity: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_end: Option<String>,
    source_event_id: &'a EventId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::parse_time;
    use crate::inbound::InboundKind;

    #[test]
    fn spend_update_payload_keeps_exact_digits() {
        let body: Value = serde_json::from_str(
            r#"{"keyId":7,"amount":0.000123,"newTotalSpend":12.50,"requestId":"r1"}"#,
        )
        .unwrap();
        let Some(InboundKind::SpendUpdated(s)) = InboundKind::parse("SpendUpdated", &body).unwrap()
        else {
            panic!("not a SpendUpdated")
        };
        let ev = InboundEvent {
            id: EventId::parse("m-1").unwrap(),
            source_time: parse_time("t", "2026-01-02T03:04:05Z").unwrap(),
            traceparent: None,
            kind: InboundKind::SpendUpdated(s.clone()),
        };
        let out = OutboundEvent::spend_update(
            &ev,
            &s,
            KeyId::new(7).unwrap(),
            Some(Decimal::new(5000, 2)),
            None,
        );
        assert_eq!(
            out.payload.get(),
            r#"{"eventId":"m-1","timestamp":"2026-01-02T03:04:05Z","virtualKeyId":7,"newSpend":0.000123,"totalSpend":12.50,"budget":50.00,"budgetRemaining":37.5,"budgetPercentage":25,"requestId":"r1"}"#
        );
        let back: OutboundEvent =
            serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(back.payload.get(), out.payload.get());
        // The money fields named for other encodings are exactly the payload's numbers other
        // than the key id.
        let payload: Map<String, Value> = serde_json::from_str(out.payload.get()).unwrap();
        let mut numbers: Vec<&str> = payload
            .iter()
            .filter(|(k, v)| v.is_number() && *k != "virtualKeyId")
            .map(|(k, _)| k.as_str())
            .collect();
        let mut money = decimal_fields(Outbound::SpendUpdate).to_vec();
        numbers.sort_unstable();
        money.sort_unstable();
        assert_eq!(numbers, money);
    }

    #[test]
    fn field_events_carry_ids_and_navigation_is_derived() {
        let body: Value =
            serde_json::from_str(r#"{"ProviderId":3,"Status":"Degraded","LatencyMs":812.50}"#)
                .unwrap();
        let Some(InboundKind::ProviderHealthChanged(p)) =
            InboundKind::parse("ProviderHealthChanged", &body).unwrap()
        else {
            panic!("not parsed")
        };
        let ev = InboundEvent {
            id: EventId::parse("ph-1").unwrap(),
            source_time: parse_time("t", "2026-01-02T03:04:05Z").unwrap(),
            traceparent: None,
            kind: InboundKind::ProviderHealthChanged(p.clone()),
        };
        let out = OutboundEvent::with_fields(&ev, Outbound::ProviderHealthChanged, None, &p.fields);
        assert_eq!(
            out.payload.get(),
            r#"{"eventId":"ph-1","latencyMs":812.50,"providerId":3,"status":"degraded","timestamp":"2026-01-02T03:04:05Z"}"#
        );
        let nav =
            OutboundEvent::navigation(&ev, Navigation::Provider, ChangeAction::Updated, &p.fields);
        assert_eq!(nav.event_id.as_str(), "ph-1:nav");
        assert_eq!(
            nav.payload.get(),
            r#"{"action":"updated","data":{"latencyMs":812.50,"providerId":3,"status":"degraded"},"eventId":"ph-1:nav","timestamp":"2026-01-02T03:04:05Z","type":"provider"}"#
        );
    }

    #[test]
    fn task_events_carry_conduits_positional_arguments_rendered_once() {
        let body = serde_json::json!({"taskId": "t1", "virtualKeyId": 5, "taskType": "batch", "error": "boom", "isRetryable": true});
        let Some(InboundKind::Task(t)) = InboundKind::parse("TaskFailed", &body).unwrap() else {
            panic!("not a task event")
        };
        let ev = InboundEvent {
            id: EventId::parse("tf-1").unwrap(),
            source_time: parse_time("t", "2026-01-02T03:04:05Z").unwrap(),
            traceparent: None,
            kind: InboundKind::Task(t.clone()),
        };
        let state = TaskState::of(&t, KeyId::new(5).unwrap(), ev.source_time, None);
        let out = OutboundEvent::task(&ev, &t, &state);
        let task = out.task.clone().expect("task facts");
        assert_eq!(task.task_id, "t1");
        assert_eq!(
            task.args.as_ref().map(|a| a.get()),
            Some(r#"["t1","boom",true]"#)
        );
        // An entry written without them (an older Herald) gets the same facts on decode.
        let mut legacy: OutboundEvent = serde_json::from_str(
            &serde_json::to_string(&out)
                .unwrap()
                .replace(r#","task":"#, r#","old":"#),
        )
        .unwrap();
        assert!(legacy.task.is_none());
        legacy.fill_in_task();
        assert_eq!(
            legacy.task.and_then(|t| t.args).map(|a| a.get().to_owned()),
            Some(r#"["t1","boom",true]"#.to_owned())
        );
    }
}
