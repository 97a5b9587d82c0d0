//! The non-spend event families of DESIGN §4: task progress (image, video, generic), provider
//! health, model catalog and mapping changes, and virtual key lifecycle. Each keeps every
//! inbound field (camelCased) for the outbound object, plus the normalised fields Herald
//! routes and reports on.
use crate::event::Fields;
use crate::money::{self, MAX_TOTAL};
use crate::{BudgetPeriod, Invalid, KeyHash, KeyId, KeyRef};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

const MAX_TEXT: usize = 200;

/// Which publisher family a task event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFamily {
    Image,
    Video,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    Requested,
    Started,
    Progress,
    Completed,
    Failed,
    Cancelled,
}

impl TaskPhase {
    /// The `status` reported to clients.
    pub fn status(self) -> &'static str {
        match self {
            Self::Requested => "pending",
            Self::Started | Self::Progress => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One task event (image/video generation or a generic `Task*`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub type_name: &'static str,
    pub family: TaskFamily,
    pub phase: TaskPhase,
    pub task_id: String,
    /// The owning key when the event names it; otherwise the task registry knows it.
    pub key: Option<KeyRef>,
    pub task_type: String,
    /// 0–100; 100 once completed.
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub is_retryable: Option<bool>,
    /// Every inbound field, camelCased.
    pub fields: Map<String, Value>,
}

const TASK_TYPES: &[(&str, TaskFamily, TaskPhase)] = &[
    (
        "ImageGenerationProgress",
        TaskFamily::Image,
        TaskPhase::Progress,
    ),
    (
        "ImageGenerationCompleted",
        TaskFamily::Image,
        TaskPhase::Completed,
    ),
    (
        "ImageGenerationFailed",
        TaskFamily::Image,
        TaskPhase::Failed,
    ),
    (
        "ImageGenerationCancelled",
        TaskFamily::Image,
        TaskPhase::Cancelled,
    ),
    (
        "VideoGenerationRequested",
        TaskFamily::Video,
        TaskPhase::Requested,
    ),
    (
        "VideoGenerationStarted",
        TaskFamily::Video,
        TaskPhase::Started,
    ),
    (
        "VideoGenerationProgress",
        TaskFamily::Video,
        TaskPhase::Progress,
    ),
    (
        "VideoGenerationCompleted",
        TaskFamily::Video,
        TaskPhase::Completed,
    ),
    (
        "VideoGenerationFailed",
        TaskFamily::Video,
        TaskPhase::Failed,
    ),
    ("TaskProgress", TaskFamily::Generic, TaskPhase::Progress),
    ("TaskCompleted", TaskFamily::Generic, TaskPhase::Completed),
    ("TaskFailed", TaskFamily::Generic, TaskPhase::Failed),
    ("TaskCancelled", TaskFamily::Generic, TaskPhase::Cancelled),
];

/// The canonical name of a task event type, matched case-insensitively.
pub fn task_type(name: &str) -> Option<(&'static str, TaskFamily, TaskPhase)> {
    TASK_TYPES
        .iter()
        .copied()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
}

fn text(field: &str, v: Option<String>) -> Result<Option<String>, Invalid> {
    match v {
        Some(s) if s.trim().is_empty() => Err(Invalid::new(format!("{field} is empty"))),
        Some(s) if s.len() > MAX_TEXT => Err(Invalid::new(format!(
            "{field} longer than {MAX_TEXT} bytes"
        ))),
        other => Ok(other),
    }
}

fn progress(v: Option<&Value>) -> Result<Option<u8>, Invalid> {
    let Some(v) = v else { return Ok(None) };
    let d = money::decimal_from_json("progress", v)?;
    if d < Decimal::ZERO || d > Decimal::ONE_HUNDRED {
        return Err(Invalid::new(format!(
            "progress must be between 0 and 100, got {d}"
        )));
    }
    Ok(d.round().to_string().parse().ok())
}

fn boolean(f: &Fields<'_>, name: &str) -> Result<Option<bool>, Invalid> {
    match f.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Invalid::new(format!("{name} must be true or false"))),
    }
}

fn key_ref(f: &Fields<'_>) -> Result<Option<KeyRef>, Invalid> {
    ["virtualKeyId", "keyId"]
        .iter()
        .find_map(|n| f.get(n).map(|v| (n, v)))
        .map(|(n, v)| KeyRef::parse(n, v))
        .transpose()
}

/// `TaskId` → `taskId`, recursively, as .NET's camelCase policy writes them.
pub fn camel_case(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (lower_first(k), camel_case(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel_case).collect()),
        other => other.clone(),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn object(body: &Value) -> Map<String, Value> {
    match camel_case(body) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl TaskEvent {
    pub fn parse(
        type_name: &'static str,
        family: TaskFamily,
        phase: TaskPhase,
        body: &Value,
    ) -> Result<Self, Invalid> {
        let f = Fields::of(body)?;
        let id_field = if family == TaskFamily::Video {
            "requestId"
        } else {
            "taskId"
        };
        let task_id = text(id_field, f.string(id_field)?.or(f.string("taskId")?))?
            .ok_or_else(|| Invalid::new(format!("missing field {id_field}")))?;
        let task_type = match family {
            TaskFamily::Image => "image".to_owned(),
            TaskFamily::Video => "video".to_owned(),
            TaskFamily::Generic => text("taskType", f.string("taskType")?)?
                .ok_or_else(|| Invalid::new("missing field taskType"))?,
        };
        let key = key_ref(&f)?;
        if family == TaskFamily::Generic && key.is_none() {
            return Err(Invalid::new("missing field virtualKeyId"));
        }
        let mut progress = progress(f.get("progress").or(f.get("progressPercentage")))?;
        if phase == TaskPhase::Completed {
            progress = Some(100);
        }
        let error = f.string("error")?.or(f.string("errorMessage")?);
        Ok(Self {
            type_name,
            family,
            phase,
            task_id,
            key,
            task_type,
            progress,
            message: f
                .string("message")?
                .or(f.string("status")?.filter(|_| phase == TaskPhase::Progress)),
            result: f.get("result").cloned(),
            error,
            is_retryable: boolean(&f, "isRetryable")?,
            fields: object(body),
        })
    }
}

/// The latest known state of a task: what `SubscribeToTask` returns and what the task
/// registry remembers (owner included) for events that do not name their key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    pub task_id: String,
    pub task_type: String,
    pub status: String,
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub virtual_key_id: KeyId,
    pub updated_at: DateTime<Utc>,
}

impl TaskState {
    pub fn of(
        event: &TaskEvent,
        owner: KeyId,
        at: DateTime<Utc>,
        previous: Option<&TaskState>,
    ) -> Self {
        Self {
            task_id: event.task_id.clone(),
            task_type: event.task_type.clone(),
            status: event.phase.status().to_owned(),
            // Progress never goes backwards within a task (docs/events.md): a lower value than
            // the task's known progress keeps the known one.
            progress: event
                .progress
                .into_iter()
                .chain(previous.map(|p| p.progress))
                .max()
                .unwrap_or(0),
            message: event
                .message
                .clone()
                .or_else(|| previous.and_then(|p| p.message.clone())),
            result: event.result.clone(),
            error: event.error.clone(),
            virtual_key_id: owner,
            updated_at: at,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

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
                        "status must be healthy, degraded or unhealthy, got {other:?}"
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

/// created / updated / deleted, from Conduit's various spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Created,
    Updated,
    Deleted,
}

impl ChangeAction {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_lowercase().as_str() {
            "created" | "create" | "added" | "add" => Ok(Self::Created),
            "updated" | "update" | "modified" | "changed" => Ok(Self::Updated),
            "deleted" | "delete" | "removed" | "remove" => Ok(Self::Deleted),
            other => Err(Invalid::new(format!(
                "changeType must be created, updated or deleted, got {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
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

/// `VirtualKeyCreated` / `Updated` / `Deleted`: what the key store must learn.
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
            .map(|v| {
                money::decimal_from_json("budget", v)
                    .and_then(|d| money::bounded("budget", d, MAX_TOTAL))
            })
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
            changed_properties,
            fields: object(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(name: &str, body: Value) -> Result<TaskEvent, Invalid> {
        let (n, fam, phase) = task_type(name).unwrap();
        TaskEvent::parse(n, fam, phase, &body)
    }

    #[test]
    fn task_events_from_each_family() {
        let img = task(
            "imagegenerationprogress",
            json!({"TaskId": "t1", "Progress": 45.5, "Message": "rendering", "VirtualKeyId": 7}),
        )
        .unwrap();
        assert_eq!(
            (
                img.type_name,
                img.task_type.as_str(),
                img.progress,
                img.phase.status()
            ),
            ("ImageGenerationProgress", "image", Some(46), "running")
        );
        assert_eq!(img.key, Some(KeyRef::Id(KeyId::new(7).unwrap())));
        assert_eq!(img.fields["taskId"], "t1", "camelCased");
        let vid = task(
            "VideoGenerationCompleted",
            json!({"requestId": "v9", "videoUrl": "https://x/v.mp4"}),
        )
        .unwrap();
        assert_eq!(
            (vid.task_id.as_str(), vid.progress, vid.key.clone()),
            ("v9", Some(100), None)
        );
        let generic = task("TaskFailed", json!({"taskId": "g1", "virtualKeyId": "3", "taskType": "batch", "error": "boom", "isRetryable": true})).unwrap();
        assert_eq!(
            (
                generic.error.as_deref(),
                generic.is_retryable,
                generic.phase.is_terminal()
            ),
            (Some("boom"), Some(true), true)
        );
    }

    #[test]
    fn task_events_refuse_bad_input() {
        assert_eq!(
            task("TaskProgress", json!({"taskId": "g", "taskType": "x"}))
                .unwrap_err()
                .0,
            "missing field virtualKeyId"
        );
        assert!(
            task(
                "ImageGenerationProgress",
                json!({"taskId": "t", "progress": 140})
            )
            .is_err()
        );
        assert!(task("ImageGenerationProgress", json!({"progress": 1})).is_err());
        assert!(task("VideoGenerationStarted", json!({"requestId": " "})).is_err());
        assert!(
            task(
                "TaskCompleted",
                json!({"taskId": "t", "virtualKeyId": 1, "taskType": "x", "isRetryable": "yes"})
            )
            .is_err()
        );
        assert!(task_type("NotATask").is_none());
    }

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
