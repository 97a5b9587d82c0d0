//! Global events about providers and models: `ProviderHealthChanged`, `ModelsDiscovered` (alias
//! `ModelCapabilitiesDiscovered`) and `ModelMappingChanged`.
use crate::fields::{Fields, MAX_TEXT, boolean, object, text};
use crate::invalid::Invalid;
use crate::vocabulary::ChangeAction;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// `ProviderHealthChanged`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealth {
    pub provider_id: Value,
    pub status: HealthStatus,
    pub fields: Map<String, Value>,
}

fn provider_id(f: &Fields<'_>) -> Result<Value, Invalid> {
    match f.required("providerId")? {
        v @ Value::Number(_) => Ok(v.clone()),
        Value::String(s) if !s.trim().is_empty() && s.len() <= MAX_TEXT => {
            Ok(Value::String(s.clone()))
        }
        _ => Err(Invalid::new(
            "providerId must be a number or a short string",
        )),
    }
}

impl ProviderHealth {
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        let f = Fields::of(body)?;
        let status = match (f.string("status")?, boolean(&f, "isHealthy")?) {
            (Some(s), _) => match s.to_ascii_lowercase().as_str() {
                "healthy" | "online" | "up" => HealthStatus::Healthy,
                "degraded" => HealthStatus::Degraded,
                "unhealthy" | "offline" | "down" => HealthStatus::Unhealthy,
                other => {
                    return Err(Invalid::new(format!(
                        "status must be healthy, degraded or unhealthy, got {:?}",
                        crate::invalid::prefix(other)
                    )));
                }
            },
            (None, Some(true)) => HealthStatus::Healthy,
            (None, Some(false)) => HealthStatus::Unhealthy,
            (None, None) => return Err(Invalid::new("missing field status")),
        };
        let mut fields = object(body);
        fields.insert("status".into(), Value::String(status.as_str().into()));
        Ok(Self {
            provider_id: provider_id(&f)?,
            status,
            fields,
        })
    }
}

/// `ModelsDiscovered` / `ModelCapabilitiesDiscovered`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsDiscovered {
    pub provider_id: Value,
    pub model_count: usize,
    pub fields: Map<String, Value>,
}

impl ModelsDiscovered {
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        let f = Fields::of(body)?;
        let models = match f.get("models") {
            Some(Value::Array(a)) if a.iter().all(|m| m.is_string() || m.is_object()) => a.len(),
            // ModelCapabilitiesDiscovered carries a map of model → capabilities.
            Some(Value::Object(m)) => m.len(),
            Some(_) => return Err(Invalid::new("models must be a list of names or objects")),
            None => return Err(Invalid::new("missing field models")),
        };
        Ok(Self {
            provider_id: provider_id(&f)?,
            model_count: models,
            fields: object(body),
        })
    }
}

/// `ModelMappingChanged`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMappingChanged {
    pub mapping_id: Value,
    pub action: ChangeAction,
    pub fields: Map<String, Value>,
}

impl ModelMappingChanged {
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        let f = Fields::of(body)?;
        let mapping_id = f.required("mappingId")?.clone();
        text(
            "modelAlias",
            Some(
                f.string("modelAlias")?
                    .ok_or_else(|| Invalid::new("missing field modelAlias"))?,
            ),
        )?;
        provider_id(&f)?;
        boolean(&f, "isEnabled")?.ok_or_else(|| Invalid::new("missing field isEnabled"))?;
        let action = ChangeAction::parse(
            &f.string("changeType")?
                .ok_or_else(|| Invalid::new("missing field changeType"))?,
        )?;
        Ok(Self {
            mapping_id,
            action,
            fields: object(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provider_health_normalises_status() {
        let p = ProviderHealth::parse(&json!({"ProviderId": 3, "ProviderName": "openai", "Status": "Degraded", "LatencyMs": 812})).unwrap();
        assert_eq!(
            (
                p.status,
                p.fields["status"].as_str(),
                p.fields["latencyMs"].as_i64()
            ),
            (HealthStatus::Degraded, Some("degraded"), Some(812))
        );
        assert_eq!(
            ProviderHealth::parse(&json!({"providerId": "p", "isHealthy": false}))
                .unwrap()
                .status,
            HealthStatus::Unhealthy
        );
        assert!(ProviderHealth::parse(&json!({"providerId": 1, "status": "sleepy"})).is_err());
        assert!(ProviderHealth::parse(&json!({"status": "healthy"})).is_err());
    }

    #[test]
    fn models_and_mappings() {
        let m =
            ModelsDiscovered::parse(&json!({"providerId": 1, "models": ["gpt-4o", {"id": "o3"}]}))
                .unwrap();
        assert_eq!(m.model_count, 2);
        assert!(ModelsDiscovered::parse(&json!({"providerId": 1, "models": [1]})).is_err());
        let c = ModelMappingChanged::parse(&json!({"MappingId": 5, "ModelAlias": "fast", "ProviderId": 1, "IsEnabled": true, "ChangeType": "Removed"})).unwrap();
        assert_eq!(c.action, ChangeAction::Deleted);
        assert!(ModelMappingChanged::parse(&json!({"mappingId": 5, "modelAlias": "fast", "providerId": 1, "isEnabled": true, "changeType": "renamed"})).is_err());
    }
}
