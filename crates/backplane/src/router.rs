//! Local listeners per audience on this node, shared by both backplanes. The router knows which
//! audiences have listeners; the backplane subscribes to exactly those.
use crate::delivery::Delivery;
use crate::mailbox::Mailbox;
use herald_domain::Audience;
use herald_telemetry::metrics;
use herald_telemetry::trace;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

#[derive(Default)]
pub(crate) struct Router {
    listeners: Mutex<HashMap<Audience, Vec<Mailbox>>>,
    /// Told about audiences whose last listener left, so the node can unsubscribe.
    vacated: Mutex<Option<mpsc::UnboundedSender<Audience>>>,
}

impl Router {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn on_vacated(&self, tx: mpsc::UnboundedSender<Audience>) {
        *self.vacated.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<Audience, Vec<Mailbox>>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(self: &Arc<Self>, audience: Audience, mailbox: Mailbox) -> Subscription {
        self.listeners()
            .entry(audience)
            .or_default()
            .push(mailbox.clone());
        Subscription {
            router: self.clone(),
            audience,
            mailbox,
        }
    }

    /// Hands a delivery to every local listener of its audience, in a `herald.deliver` span
    /// (a child of the event's trace), and observes the bus-to-dispatch latency.
    pub(crate) fn dispatch(&self, d: &Delivery) {
        let mut map = self.listeners();
        if let Some(list) = map.get_mut(&d.audience) {
            let span = trace::child_of(d.event.traceparent.as_deref(), || {
                tracing::info_span!(
                    "herald.deliver",
                    otel.kind = "consumer",
                    herald.event_id = d.event.event_id.as_str(),
                    herald.audience = %d.audience,
                    herald.listeners = tracing::field::Empty,
                )
            });
            list.retain(|m| m.offer(d.clone()));
            span.record("herald.listeners", list.len());
            // A clock behind the source's counts as zero, not as a huge duration.
            let age = chrono::Utc::now() - d.event.timestamp;
            metrics()
                .delivery_latency_seconds
                .observe(age.to_std().unwrap_or_default());
        }
    }

    pub(crate) fn has_listeners(&self, audience: &Audience) -> bool {
        self.listeners()
            .get(audience)
            .is_some_and(|l| !l.is_empty())
    }

    /// Audiences with at least one local listener.
    pub(crate) fn audiences(&self) -> Vec<Audience> {
        self.listeners()
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(a, _)| *a)
            .collect()
    }

    fn remove(&self, audience: Audience, mailbox: &Mailbox) {
        let vacated = {
            let mut map = self.listeners();
            let Some(list) = map.get_mut(&audience) else {
                return;
            };
            list.retain(|m| !m.same(mailbox));
            let empty = list.is_empty();
            if empty {
                map.remove(&audience);
            }
            empty
        };
        if !vacated {
            return;
        }
        if let Some(tx) = self
            .vacated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send(audience);
        }
    }
}

/// A local listener's registration. Dropping it removes the listener.
pub struct Subscription {
    router: Arc<Router>,
    audience: Audience,
    mailbox: Mailbox,
}

impl Subscription {
    pub fn audience(&self) -> Audience {
        self.audience
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.remove(self.audience, &self.mailbox);
    }
}
