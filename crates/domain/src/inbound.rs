//! Inbound events: a validated bus message and its payload, by type (see [`crate::vocabulary`]).
use crate::fields::Fields;
use crate::ids::EventId;
use crate::invalid::Invalid;
use crate::key::{BudgetPeriod, KeyHash, KeyRef};
use crate::key_change::VirtualKeyChanged;
use crate::money::{self, MAX_AMOUNT, MAX_TOTAL};
use crate::provider::{ModelMappingChanged, ModelsDiscovered, ProviderHealth};
use crate::task::TaskEvent;
use crate::vocabulary::{self, InboundSpec, InboundType};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

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
    /// Builds the kind from its short type name (`SpendUpdated`, matched case-insensitively,
    /// aliases included) and message body. `Ok(None)` means the type is not one Herald handles.
    pub fn parse(type_name: &str, body: &Value) -> Result<Option<Self>, Invalid> {
        let Some(spec) = vocabulary::inbound(type_name) else {
            return Ok(None);
        };
        Ok(Some(match spec.kind {
            InboundType::SpendUpdated => {
                Self::SpendUpdated(SpendUpdated::parse(&Fields::of(body)?)?)
            }
            InboundType::Task(family, phase) => {
                Self::Task(TaskEvent::parse(spec.own_event(), family, phase, body)?)
            }
            InboundType::ProviderHealthChanged => {
                Self::ProviderHealthChanged(ProviderHealth::parse(body)?)
            }
            InboundType::ModelsDiscovered => Self::ModelsDiscovered(ModelsDiscovered::parse(body)?),
            InboundType::ModelMappingChanged => {
                Self::ModelMappingChanged(ModelMappingChanged::parse(body)?)
            }
            InboundType::VirtualKey(action) => {
                Self::VirtualKey(VirtualKeyChanged::parse(action, body)?)
            }
        }))
    }

    /// The vocabulary entry of this kind: its canonical name and what it produces.
    pub fn spec(&self) -> &'static InboundSpec {
        vocabulary::spec(match self {
            Self::SpendUpdated(_) => InboundType::SpendUpdated,
            Self::Task(t) => InboundType::Task(t.family, t.phase),
            Self::ProviderHealthChanged(_) => InboundType::ProviderHealthChanged,
            Self::ModelsDiscovered(_) => InboundType::ModelsDiscovered,
            Self::ModelMappingChanged(_) => InboundType::ModelMappingChanged,
            Self::VirtualKey(k) => InboundType::VirtualKey(k.action),
        })
    }

    /// The canonical inbound type name, e.g. `SpendUpdated`.
    pub fn type_name(&self) -> &'static str {
        self.spec().name
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
        let budget = f
            .get("budget")
            .map(|v| money::Budget::from_json("budget", v).map(money::Budget::get))
            .transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::KeyId;
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
}
