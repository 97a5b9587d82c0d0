//! Hub methods the client calls: `Resume`, `SubscribeToTask`, `UnsubscribeFromTask`,
//! `SubscribeToVirtualKey`, `UnsubscribeFromVirtualKey`, `GetSpendSummary` (docs/protocol.md).
use super::{Filters, ReplayError, Session, Step, Stop, out};
use crate::cursor::Cursor;
use crate::hubs::{Access, HubMethod};
use herald_domain::invalid::prefix;
use serde_json::Value;

impl Session {
    pub(super) async fn on_invocation(
        &mut self,

        invocation_id: Option<String>,
        target: &str,
        arguments: Vec<Value>,
    ) -> Step {
        let outcome: Result<String, String> = match self.hub.method(target) {
            // The name is client input: quoted up to 64 bytes (a 20 KB name is not echoed).
            None => Err(format!("Unknown hub method '{}'", prefix(target))),
            Some(HubMethod::Resume) => match arguments.as_slice() {
                [Value::String(c)] => match Cursor::decode(c) {
                    Ok(cursor) => match self.replay(&cursor).await {
                        Ok(n) => Ok(format!("{{\"replayed\":{n}}}")),
                        Err(ReplayError::Stop) => return Err(Stop),
                        Err(ReplayError::Unavailable(e)) => {
                            tracing::warn!(connection = %self.connection_id, error = %e, "resume failed");
                            Err("History unavailable; try again.".to_owned())
                        }
                    },
                    Err(e) => Err(e),
                },
                _ => Err("Resume expects one argument: the cursor string.".to_owned()),
            },
            Some(HubMethod::SubscribeToTask) => match arguments.as_slice() {
                [Value::String(task)] => Box::pin(self.subscribe_to_task(task)).await,
                _ => Err("SubscribeToTask expects one argument: the task id.".to_owned()),
            },
            Some(m @ (HubMethod::SubscribeToVirtualKey | HubMethod::UnsubscribeFromVirtualKey)) => {
                match arguments.as_slice() {
                    [v] => match herald_domain::KeyRef::parse("virtualKeyId", v) {
                        Ok(herald_domain::KeyRef::Id(id)) => {
                            if m == HubMethod::SubscribeToVirtualKey {
                                self.filters().admin_keys.insert(id);
                            } else if let Some(f) = &mut self.filters {
                                f.admin_keys.remove(&id);
                            }
                            Ok("null".to_owned())
                        }
                        _ => Err("Expected one argument: the virtual key id.".to_owned()),
                    },
                    _ => Err("Expected one argument: the virtual key id.".to_owned()),
                }
            }
            Some(HubMethod::GetSpendSummary) => {
                let key = match (self.hub.access, arguments.as_slice()) {
                    (Access::Admin, [v]) => match herald_domain::KeyRef::parse("virtualKeyId", v) {
                        Ok(herald_domain::KeyRef::Id(id)) => Ok(id),
                        _ => Err("GetSpendSummary expects one argument: the virtual key id."),
                    },
                    (Access::Admin, _) => {
                        Err("GetSpendSummary expects one argument: the virtual key id.")
                    }
                    (Access::VirtualKey, []) => match &self.own_key {
                        Some((id, _)) => Ok(*id),
                        None => Err("GetSpendSummary expects one argument: the virtual key id."),
                    },
                    (Access::VirtualKey, _) => Err("GetSpendSummary expects no arguments."),
                };
                match key {
                    Ok(id) => Box::pin(self.spend_summary(id)).await,
                    Err(e) => Err(e.to_owned()),
                }
            }
            Some(HubMethod::UnsubscribeFromTask) => match arguments.as_slice() {
                [Value::String(task)] => {
                    if let Some(f) = &mut self.filters {
                        f.tasks.remove(task);
                    }
                    Ok("null".to_owned())
                }
                _ => Err("UnsubscribeFromTask expects one argument: the task id.".to_owned()),
            },
        };
        // Without an invocation id the client expects no completion.
        let Some(id) = invocation_id else {
            return Ok(());
        };
        let record = match outcome {
            Ok(result) => out::completion_result(self.proto, &id, &result),
            Err(error) => out::completion_error(self.proto, &id, &error),
        };
        self.send(record).await
    }

    /// Checks that the caller may see the task and returns its latest state (Conduit's
    /// HubException messages on refusal).
    pub(super) fn filters(&mut self) -> &mut Filters {
        self.filters.get_or_insert_default()
    }

    /// The key's spend summary from the store, `null` for a key it does not know.
    pub(super) async fn spend_summary(
        &mut self,
        key: herald_domain::KeyId,
    ) -> Result<String, String> {
        let unavailable = || "Spend summary unavailable; try again.".to_owned();
        let limit = self.gw.config.spend_summary_transactions;
        match self.gw.store.spend_summary(key, limit).await {
            Ok(summary) => serde_json::to_string(&summary).map_err(|_| unavailable()),
            Err(e) => {
                tracing::warn!(connection = %self.connection_id, error = %e, "spend summary failed");
                Err(unavailable())
            }
        }
    }

    pub(super) async fn subscribe_to_task(&mut self, task: &str) -> Result<String, String> {
        let state = match self.gw.backplane.task(task).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("Task not found".to_owned()),
            Err(e) => {
                tracing::warn!(connection = %self.connection_id, error = %e, "task lookup failed");
                return Err("Task state unavailable; try again.".to_owned());
            }
        };
        let owns = self
            .own_key
            .as_ref()
            .is_some_and(|(id, _)| *id == state.virtual_key_id);
        if !owns && !self.is_admin {
            return Err("Unauthorized access to task".to_owned());
        }
        self.filters().tasks.insert(task.to_owned());
        serde_json::to_string(&state).map_err(|_| "Task state unavailable; try again.".to_owned())
    }
}
