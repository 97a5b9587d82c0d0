//! In-process backplane for `standalone` without Redis: the same semantics (dedupe, bounded
//! history, live fan-out) within one process.
use crate::contract::{Backplane, BackplaneError, History, Published};
use crate::delivery::Delivery;
use crate::inbox::RelayInbox;
use crate::mailbox::Mailbox;
use crate::position::Position;
use crate::relay::LocalRelay;
use crate::router::Router;
use crate::router::Subscription;
use async_trait::async_trait;
use herald_domain::task::TaskState;
use herald_domain::{Audience, EventId, OutboundEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub struct MemoryBackplane {
    router: Arc<Router>,
    streams: Mutex<HashMap<Audience, Stream>>,
    tasks: Mutex<HashMap<String, TaskState>>,
    max_len: usize,
    relay: LocalRelay,
}

#[derive(Default)]
struct Stream {
    entries: VecDeque<Delivery>,
    /// Event ids still in `entries`: the dedupe window is the history window.
    seen: HashSet<EventId>,
    last: Position,
    /// Highest position trimmed away.
    trimmed: Option<Position>,
}

impl MemoryBackplane {
    pub fn new(max_len: usize) -> Self {
        Self {
            router: Router::new(),
            streams: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            max_len: max_len.max(1),
            relay: LocalRelay::default(),
        }
    }

    fn next_position(last: Position) -> Position {
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        if now > last.ms {
            Position { ms: now, seq: 0 }
        } else {
            Position {
                ms: last.ms,
                seq: last.seq + 1,
            }
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(
        &self,
        audiences: &[Audience],
        event: &OutboundEvent,
    ) -> Result<Published, BackplaneError> {
        let event = Arc::new(event.clone());
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut done = Published::default();
        for &audience in audiences {
            let s = streams.entry(audience).or_default();
            if !s.seen.insert(event.event_id.clone()) {
                done.repeated += 1;
                continue;
            }
            done.appended += 1;
            let position = Self::next_position(s.last);
            s.last = position;
            let d = Delivery {
                audience,
                position,
                event: event.clone(),
            };
            s.entries.push_back(d.clone());
            while s.entries.len() > self.max_len {
                if let Some(old) = s.entries.pop_front() {
                    s.seen.remove(&old.event.event_id);
                    s.trimmed = Some(old.position);
                }
            }
            // Under the streams lock, so every listener sees stream order.
            self.router.dispatch(&d);
        }
        Ok(done)
    }

    async fn subscribe(
        &self,
        audience: Audience,
        mailbox: Mailbox,
    ) -> Result<Subscription, BackplaneError> {
        // Taking the streams lock orders this registration against publishes.
        let _order = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(self.router.add(audience, mailbox))
    }

    async fn history(
        &self,
        audience: Audience,
        after: Option<Position>,
        limit: usize,
    ) -> Result<History, BackplaneError> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(s) = streams.get(&audience) else {
            return Ok(History::default());
        };
        let gap = matches!((after, s.trimmed), (Some(a), Some(t)) if a < t);
        let events = s
            .entries
            .iter()
            .filter(|d| after.is_none_or(|a| d.position > a))
            .take(limit)
            .cloned()
            .collect();
        Ok(History { events, gap })
    }

    async fn position(&self, audience: Audience) -> Result<Position, BackplaneError> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(streams.get(&audience).map_or(Position::ZERO, |s| s.last))
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn relay_listen(&self, name: &str) -> Result<RelayInbox, BackplaneError> {
        Ok(self.relay.listen(name))
    }

    async fn relay_send(&self, name: &str, payload: Vec<u8>) -> Result<bool, BackplaneError> {
        Ok(self.relay.send(name, payload))
    }

    async fn relay_claim(&self, name: &str, ttl: Duration) -> Result<bool, BackplaneError> {
        Ok(self.relay.claim(name, ttl))
    }

    async fn record_task(&self, state: &TaskState) -> Result<(), BackplaneError> {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let keep_old = tasks
            .get(&state.task_id)
            .is_some_and(|old| old.is_terminal() && !state.is_terminal());
        if !keep_old {
            tasks.insert(state.task_id.clone(), state.clone());
        }
        Ok(())
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskState>, BackplaneError> {
        Ok(self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(task_id)
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Received;
    use herald_domain::KeyId;

    fn event(id: &str) -> OutboundEvent {
        OutboundEvent {
            event_id: EventId::parse(id).unwrap(),
            name: herald_domain::Outbound::SpendUpdate,
            key_id: None,
            timestamp: chrono::Utc::now(),
            traceparent: None,
            payload: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
            task: None,
            binary: Default::default(),
        }
    }

    #[tokio::test]
    async fn dedupes_keeps_order_trims_and_reports_gaps() {
        let bp = MemoryBackplane::new(3);
        let k = Audience::Key(KeyId::new(1).unwrap());
        let (mb, mut rx) = Mailbox::new(1 << 20);
        let sub = bp.subscribe(k, mb).await.unwrap();
        for id in ["a", "b", "a", "c", "d"] {
            bp.publish(&[k, Audience::Admin], &event(id)).await.unwrap();
        }
        let mut got = vec![];
        while let Some(Received::Delivery(d)) = rx.try_recv() {
            got.push(d.event.event_id.to_string());
        }
        assert_eq!(got, ["a", "b", "c", "d"]);
        let all = bp.history(k, None, 10).await.unwrap();
        assert_eq!(all.events.len(), 3, "trimmed to max_len");
        let first = all.events[0].position;
        let h = bp.history(k, Some(Position::ZERO), 10).await.unwrap();
        assert!(h.gap, "position before the trimmed entry");
        let h = bp.history(k, Some(first), 10).await.unwrap();
        assert!(!h.gap);
        assert_eq!(
            h.events
                .iter()
                .map(|d| d.event.event_id.to_string())
                .collect::<Vec<_>>(),
            ["c", "d"]
        );
        drop(sub);
        bp.publish(&[k], &event("e")).await.unwrap();
        assert!(rx.try_recv().is_none(), "no delivery after unsubscribe");
    }
}
