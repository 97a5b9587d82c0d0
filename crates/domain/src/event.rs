//! Inbound events (validated bus messages) and outbound events (what travels through the
//! backplane to clients).
use crate::budget::BudgetAlert;
use crate::catalog::{
    self, ChangeAction, ModelMappingChanged, ModelsDiscovered, ProviderHealth, TaskEvent,
    VirtualKeyChanged,
};
use crate::money::{self, MAX_AMOUNT, MAX_TOTAL};
use crate::{BudgetPeriod, EventId, Invalid, KeyHash, KeyId};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A validated bus message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    pub id: EventId,
    /// When the source says the event happened (`sentTime` / `time`), else when it was received.
    pub source_time: DateTime<Utc>,
    /// W3C trace context carried from the bus, if any.
    pub traceparent: Option<String>,
    pub kind: InboundKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundKind {
    SpendUpdated(SpendUpdated),
    Task(TaskEvent),
    ProviderHealthChanged(ProviderHealth),
    ModelsDiscovered(ModelsDiscovered),
    ModelMappingChanged(ModelMappingChanged),
    VirtualKey(VirtualKeyChanged),
}

impl InboundKind {
    /// Builds the kind from its short type name (`SpendUpdated`, matched case-insensitively)
    /// and message body. `Ok(None)` means the type is not one Herald handles.
    pub fn parse(type_name: &str, body: &Value) -> Result<Option<Self>, Invalid> {
        let fields = Fields::of(body)?;
        if let Some((name, family, phase)) = catalog::task_type(type_name) {
            return Ok(Some(Self::Task(TaskEvent::parse(
                name, family, phase, body,
            )?)));
        }
        Ok(match type_name.to_ascii_lowercase().as_str() {
            "spendupdated" => Some(Self::SpendUpdated(SpendUpdated::parse(&fields)?)),
            "providerhealthchanged" => {
                Some(Self::ProviderHealthChanged(ProviderHealth::parse(body)?))
            }
            "modelsdiscovered" | "modelcapabilitiesdiscovered" => {
                Some(Self::ModelsDiscovered(ModelsDiscovered::parse(body)?))
            }
            "modelmappingchanged" => {
                Some(Self::ModelMappingChanged(ModelMappingChanged::parse(body)?))
            }
            "virtualkeycreated" => Some(Self::VirtualKey(VirtualKeyChanged::parse(
                ChangeAction::Created,
                body,
            )?)),
            "virtualkeyupdated" => Some(Self::VirtualKey(VirtualKeyChanged::parse(
                ChangeAction::Updated,
                body,
            )?)),
            "virtualkeydeleted" => Some(Self::VirtualKey(VirtualKeyChanged::parse(
                ChangeAction::Deleted,
                body,
            )?)),
            _ => None,
        })
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::SpendUpdated(_) => "SpendUpdated",
            Self::Task(t) => t.type_name,
            Self::ProviderHealthChanged(_) => "ProviderHealthChanged",
            Self::ModelsDiscovered(_) => "ModelsDiscovered",
            Self::ModelMappingChanged(_) => "ModelMappingChanged",
            Self::VirtualKey(k) => match k.action {
                ChangeAction::Created => "VirtualKeyCreated",
                ChangeAction::Updated => "VirtualKeyUpdated",
                ChangeAction::Deleted => "VirtualKeyDeleted",
            },
        }
    }
}

/// How an event names its virtual key: by id, or by the SHA-256 of the raw key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Id(KeyId),
    Hash(KeyHash),
}

impl KeyRef {
    /// An integer, a numeric string, or a 64-character hex string (DESIGN §4).
    pub fn parse(field: &str, v: &Value) -> Result<Self, Invalid> {
        match v {
            Value::Number(n) => {
                let id = n
                    .as_i64()
                    .ok_or_else(|| Invalid::new(format!("{field} must be a positive integer")))?;
                Ok(Self::Id(KeyId::new(id)?))
            }
            Value::String(s) if s.len() == 64 => Ok(Self::Hash(KeyHash::parse(s)?)),
            Value::String(s) => Ok(Self::Id(KeyId::parse(s)?)),
            _ => Err(Invalid::new(format!(
                "{field} must be a key id or key hash"
            ))),
        }
    }
}

/// Conduit's `SpendUpdated`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendUpdated {
    pub key: KeyRef,
    pub amount: Decimal,
    pub new_total_spend: Decimal,
    pub request_id: Option<String>,
    pub key_hash: Option<KeyHash>,
    pub budget: Option<Decimal>,
    pub budget_period: Option<BudgetPeriod>,
    pub period_start: Option<DateTime<Utc>>,
    pub model: Option<String>,
    pub provider: Option<String>,
}

impl SpendUpdated {
    fn parse(f: &Fields<'_>) -> Result<Self, Invalid> {
        let key = KeyRef::parse("keyId", f.required_any(&["keyId", "virtualKeyId"])?)?;
        let amount = money::bounded(
            "amount",
            money::decimal_from_json("amount", f.required("amount")?)?,
            MAX_AMOUNT,
        )?;
        let new_total_spend = money::bounded(
            "newTotalSpend",
            money::decimal_from_json("newTotalSpend", f.required("newTotalSpend")?)?,
            MAX_TOTAL,
        )?;
        let budget = match f.get("budget") {
            Some(v) => Some(money::bounded(
                "budget",
                money::decimal_from_json("budget", v)?,
                MAX_TOTAL,
            )?),
            None => None,
        };
        Ok(Self {
            key,
            amount,
            new_total_spend,
            request_id: f.string("requestId")?,
            key_hash: f
                .string("keyHash")?
                .map(|h| KeyHash::parse(&h))
                .transpose()?,
            budget,
            budget_period: f
                .string("budgetPeriod")?
                .map(|p| BudgetPeriod::parse(&p))
                .transpose()?,
            period_start: f.time("periodStart")?,
            model: f.string("model")?,
            provider: f.string("provider")?,
        })
    }
}

/// Case-insensitive view of a JSON object's fields: Conduit's publishers write PascalCase or
/// camelCase. A JSON `null` counts as absent.
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn of(v: &'a Value) -> Result<Self, Invalid> {
        v.as_object()
            .map(Self)
            .ok_or_else(|| Invalid::new("message body must be a JSON object"))
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let found = match self.0.get(name) {
            Some(v) => Some(v),
            None => self
                .0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v),
        };
        found.filter(|v| !v.is_null())
    }

    pub fn required(&self, name: &str) -> Result<&'a Value, Invalid> {
        self.get(name)
            .ok_or_else(|| Invalid::new(format!("missing field {name}")))
    }

    pub fn required_any(&self, names: &[&str]) -> Result<&'a Value, Invalid> {
        names
            .iter()
            .find_map(|n| self.get(n))
            .ok_or_else(|| Invalid::new(format!("missing field {}", names.join(" or "))))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(Invalid::new(format!("{name} must be a string"))),
        }
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, Invalid> {
        self.string(name)?.map(|s| parse_time(name, &s)).transpose()
    }
}

/// RFC 3339, with or without offset (.NET writes `2024-01-01T00:00:00` for unspecified kind;
/// Herald takes that as UTC).
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, Invalid> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .map_err(|_| Invalid::new(format!("{field} is not an RFC 3339 time: {s:?}")))
}

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// What travels through the backplane: one event for one or more audiences. `payload` is the
/// client-facing argument object, already serialized, without `cursor` (the gateway adds it per
/// connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundEvent {
    pub event_id: EventId,
    /// The hub method clients receive, e.g. `SpendUpdate`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub payload: Box<RawValue>,
}

impl OutboundEvent {
    fn new<P: Serialize>(
        event_id: EventId,
        name: &str,
        key_id: Option<KeyId>,
        timestamp: DateTime<Utc>,
        traceparent: Option<String>,
        payload: &P,
    ) -> Self {
        // Serializing a struct of strings, decimals and numbers cannot fail.
        let payload = serde_json::value::to_raw_value(payload).unwrap_or_default();
        Self {
            event_id,
            name: name.to_owned(),
            key_id,
            timestamp,
            traceparent,
            payload,
        }
    }

    /// An event whose client object is the inbound fields (camelCased) plus `eventId`,
    /// `timestamp` and, for a key's events, `virtualKeyId`.
    pub fn with_fields(
        ev: &InboundEvent,
        name: &str,
        key_id: Option<KeyId>,
        fields: &Map<String, Value>,
    ) -> Self {
        Self::fields_event(ev.id.clone(), ev, name, key_id, fields.clone())
    }

    /// `NavigationStateUpdated` (DESIGN §6): `type`, `action`, `data`, `timestamp`. Its id is
    /// derived from the source event's, so a redelivery is the same event.
    pub fn navigation(
        ev: &InboundEvent,
        kind: &str,
        action: ChangeAction,
        data: &Map<String, Value>,
    ) -> Self {
        let mut payload = Map::new();
        payload.insert("type".into(), Value::String(kind.into()));
        payload.insert("action".into(), Value::String(action.as_str().into()));
        payload.insert("data".into(), Value::Object(data.clone()));
        let id = EventId::parse(&format!("{}:nav", ev.id)).unwrap_or_else(|_| ev.id.clone());
        Self::fields_event(id, ev, "NavigationStateUpdated", None, payload)
    }

    fn fields_event(
        id: EventId,
        ev: &InboundEvent,
        name: &str,
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

    /// `SpendUpdate` (DESIGN §6) for a SpendUpdated of key `key_id`, with the effective budget.
    pub fn spend_update(
        ev: &InboundEvent,
        s: &SpendUpdated,
        key_id: KeyId,
        budget: Option<Decimal>,
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
        };
        Self::new(
            ev.id.clone(),
            "SpendUpdate",
            Some(key_id),
            ev.source_time,
            ev.traceparent.clone(),
            &payload,
        )
    }

    /// `BudgetAlert` (DESIGN §5, §6).
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
            "BudgetAlert",
            Some(a.key_id),
            a.timestamp,
            traceparent,
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
    use serde_json::json;

    fn spend(body: Value) -> Result<SpendUpdated, Invalid> {
        match InboundKind::parse("SpendUpdated", &body)? {
            Some(InboundKind::SpendUpdated(s)) => Ok(s),
            other => panic!("not a SpendUpdated: {other:?}"),
        }
    }

    #[test]
    fn every_family_is_recognised_case_insensitively() {
        let h = KeyHash::of_raw("k");
        let cases = [
            (
                "imageGenerationCompleted",
                json!({"taskId": "t"}),
                "ImageGenerationCompleted",
            ),
            (
                "VideoGenerationRequested",
                json!({"requestId": "v", "virtualKeyId": 1}),
                "VideoGenerationRequested",
            ),
            (
                "TaskCancelled",
                json!({"taskId": "t", "virtualKeyId": 1, "taskType": "x"}),
                "TaskCancelled",
            ),
            (
                "ProviderHealthChanged",
                json!({"providerId": 1, "status": "healthy"}),
                "ProviderHealthChanged",
            ),
            (
                "ModelCapabilitiesDiscovered",
                json!({"providerId": 1, "models": []}),
                "ModelsDiscovered",
            ),
            (
                "ModelMappingChanged",
                json!({"mappingId": 1, "modelAlias": "a", "providerId": 1, "isEnabled": true, "changeType": "Created"}),
                "ModelMappingChanged",
            ),
            (
                "virtualkeydeleted",
                json!({"keyId": 1}),
                "VirtualKeyDeleted",
            ),
            (
                "VirtualKeyCreated",
                json!({"keyId": 1, "keyHash": h.as_str()}),
                "VirtualKeyCreated",
            ),
        ];
        for (name, body, canonical) in cases {
            let kind = InboundKind::parse(name, &body)
                .unwrap()
                .unwrap_or_else(|| panic!("{name} not recognised"));
            assert_eq!(kind.type_name(), canonical);
        }
    }

    #[test]
    fn parses_pascal_and_camel_case() {
        let a = spend(
            json!({"KeyId": 42, "Amount": 0.000123, "NewTotalSpend": 12.50, "Model": "gpt-4o"}),
        )
        .unwrap();
        let b = spend(
            serde_json::from_str(
                r#"{"keyId":"42","amount":0.000123,"newTotalSpend":12.50,"model":"gpt-4o"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(a.key, KeyRef::Id(KeyId::new(42).unwrap()));
        assert_eq!(a, b);
        assert_eq!(b.new_total_spend.to_string(), "12.50");
    }

    #[test]
    fn key_may_be_a_hash() {
        let h = KeyHash::of_raw("condt_x");
        let s =
            spend(json!({"virtualKeyId": h.as_str(), "amount": 1, "newTotalSpend": 1})).unwrap();
        assert_eq!(s.key, KeyRef::Hash(h));
    }

    #[test]
    fn refuses_missing_negative_and_absurd_values() {
        let e = spend(json!({"keyId": 1, "amount": 1})).unwrap_err();
        assert_eq!(e.0, "missing field newTotalSpend");
        assert!(spend(json!({"keyId": 1, "amount": -1, "newTotalSpend": 1})).is_err());
        assert!(spend(json!({"keyId": 1, "amount": 1e15, "newTotalSpend": 1})).is_err());
        assert!(spend(json!({"keyId": 0, "amount": 1, "newTotalSpend": 1})).is_err());
        assert!(spend(json!({"keyId": true, "amount": 1, "newTotalSpend": 1})).is_err());
        assert!(spend(json!([1, 2])).is_err());
        assert_eq!(InboundKind::parse("Nope", &json!({})), Ok(None));
    }

    #[test]
    fn spend_update_payload_keeps_exact_digits() {
        let body: Value = serde_json::from_str(
            r#"{"keyId":7,"amount":0.000123,"newTotalSpend":12.50,"requestId":"r1"}"#,
        )
        .unwrap();
        let s = spend(body).unwrap();
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
        );
        assert_eq!(
            out.payload.get(),
            r#"{"eventId":"m-1","timestamp":"2026-01-02T03:04:05Z","virtualKeyId":7,"newSpend":0.000123,"totalSpend":12.50,"budget":50.00,"budgetRemaining":37.5,"budgetPercentage":25,"requestId":"r1"}"#
        );
        let back: OutboundEvent =
            serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(back.payload.get(), out.payload.get());
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
        let out = OutboundEvent::with_fields(&ev, "ProviderHealthChanged", None, &p.fields);
        assert_eq!(
            out.payload.get(),
            r#"{"eventId":"ph-1","latencyMs":812.50,"providerId":3,"status":"degraded","timestamp":"2026-01-02T03:04:05Z"}"#
        );
        let nav = OutboundEvent::navigation(&ev, "provider", ChangeAction::Updated, &p.fields);
        assert_eq!(nav.event_id.as_str(), "ph-1:nav");
        assert_eq!(
            nav.payload.get(),
            r#"{"action":"updated","data":{"latencyMs":812.50,"providerId":3,"status":"degraded"},"eventId":"ph-1:nav","timestamp":"2026-01-02T03:04:05Z","type":"provider"}"#
        );
    }

    #[test]
    fn times_without_offset_are_utc() {
        assert_eq!(
            format_time(parse_time("t", "2026-01-02T03:04:05.5").unwrap()),
            "2026-01-02T03:04:05.500Z"
        );
        assert!(parse_time("t", "yesterday").is_err());
    }
}
