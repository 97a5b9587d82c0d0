//! Task events (image and video generation, generic `Task*`) and the latest known state of a
//! task, which `SubscribeToTask` returns and the task registry keeps.
use crate::fields::{Fields, boolean, object, text};
use crate::ids::KeyId;
use crate::invalid::Invalid;
use crate::key::KeyRef;
use crate::money;
use crate::vocabulary::{Outbound, TaskFamily, TaskPhase, TaskStatus};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// One task event (image/video generation or a generic `Task*`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// The outbound event it becomes (task events keep their inbound name).
    pub event: Outbound,
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

fn key_ref(f: &Fields<'_>) -> Result<Option<KeyRef>, Invalid> {
    ["virtualKeyId", "keyId"]
        .iter()
        .find_map(|n| f.get(n).map(|v| (n, v)))
        .map(|(n, v)| KeyRef::parse(n, v))
        .transpose()
}

impl TaskEvent {
    pub fn parse(
        event: Outbound,
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
            event,
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
    pub status: TaskStatus,
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
            status: event.phase.status(),
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
        self.status.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::KeyId;
    use serde_json::json;

    fn task(name: &str, body: Value) -> Result<TaskEvent, Invalid> {
        let event = Outbound::parse(name).expect("a task event");
        let (fam, phase) = event.task().expect("a task event");
        TaskEvent::parse(event, fam, phase, &body)
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
                img.event.name(),
                img.task_type.as_str(),
                img.progress,
                img.phase.status().as_str()
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
    }
}
