//! `VirtualKeyCreated` / `Updated` / `Deleted`: what the key store must learn.
use crate::fields::{Fields, boolean, object};
use crate::ids::KeyId;
use crate::invalid::Invalid;
use crate::key::{BudgetPeriod, KeyHash, KeyRef};
use crate::money;
use crate::vocabulary::ChangeAction;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKeyChanged {
    pub action: ChangeAction,
    pub key_id: KeyId,
    pub key_hash: Option<KeyHash>,
    pub key_name: Option<String>,
    pub is_enabled: Option<bool>,
    pub budget: Option<Decimal>,
    pub budget_period: Option<BudgetPeriod>,
    pub expires_at: Option<DateTime<Utc>>,
    pub is_admin: Option<bool>,
    /// `SpikeAlerts`: turns the key's spike alerts on or off.
    pub spike_alerts: Option<bool>,
    pub changed_properties: Option<Vec<String>>,
    pub fields: Map<String, Value>,
}

impl VirtualKeyChanged {
    pub fn parse(action: ChangeAction, body: &Value) -> Result<Self, Invalid> {
        let f = Fields::of(body)?;
        let key_id = match KeyRef::parse("keyId", f.required_any(&["keyId", "virtualKeyId"])?)? {
            KeyRef::Id(id) => id,
            KeyRef::Hash(_) => return Err(Invalid::new("keyId must be the numeric key id")),
        };
        let key_hash = f
            .string("keyHash")?
            .map(|h| KeyHash::parse(&h))
            .transpose()?;
        if action == ChangeAction::Created && key_hash.is_none() {
            return Err(Invalid::new("missing field keyHash"));
        }
        let budget = f
            .get("budget")
            .map(|v| money::Budget::from_json("budget", v).map(money::Budget::get))
            .transpose()?;
        let changed_properties = match f.get("changedProperties") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(_) => return Err(Invalid::new("changedProperties must be a list of names")),
        };
        Ok(Self {
            action,
            key_id,
            key_hash,
            key_name: f.string("keyName")?,
            is_enabled: boolean(&f, "isEnabled")?,
            budget,
            budget_period: f
                .string("budgetPeriod")?
                .map(|p| BudgetPeriod::parse(&p))
                .transpose()?,
            expires_at: f.time("expiresAt")?,
            is_admin: boolean(&f, "isAdmin")?,
            spike_alerts: boolean(&f, "spikeAlerts")?,
            changed_properties,
            fields: object(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_lifecycle() {
        let h = KeyHash::of_raw("condt_k");
        let body: Value = serde_json::from_str(&format!(
            r#"{{"KeyId":4,"KeyHash":"{}","KeyName":"ci","Budget":25.00,"BudgetPeriod":"Monthly","ExpiresAt":"2030-01-01T00:00:00Z"}}"#,
            h.as_str()
        ))
        .unwrap();
        let c = VirtualKeyChanged::parse(ChangeAction::Created, &body).unwrap();
        assert_eq!(
            (
                c.key_id.get(),
                c.budget.map(|b| b.to_string()),
                c.budget_period
            ),
            (4, Some("25.00".into()), Some(BudgetPeriod::Monthly))
        );
        assert!(
            VirtualKeyChanged::parse(ChangeAction::Created, &json!({"keyId": 4})).is_err(),
            "created needs the hash"
        );
        let u = VirtualKeyChanged::parse(
            ChangeAction::Updated,
            &json!({"keyId": 4, "isEnabled": false, "changedProperties": ["IsEnabled"]}),
        )
        .unwrap();
        assert_eq!(
            (u.is_enabled, u.changed_properties.clone()),
            (Some(false), Some(vec!["IsEnabled".to_string()]))
        );
        assert!(
            VirtualKeyChanged::parse(ChangeAction::Deleted, &json!({"keyId": h.as_str()})).is_err()
        );
    }
}
