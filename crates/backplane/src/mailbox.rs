//! A per-connection outbound queue bounded in bytes (DESIGN §8, slow consumers). When a
//! connection falls too far behind, its mailbox is marked overflowed: the connection is closed
//! with `allowReconnect` and resumes from its cursor, instead of slowing everyone else or
//! silently losing events.
use crate::Delivery;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::mpsc;

struct Shared {
    queued_bytes: AtomicUsize,
    limit_bytes: usize,
    overflowed: AtomicBool,
}

/// The sending side, held by the backplane's router.
#[derive(Clone)]
pub struct Mailbox {
    tx: mpsc::UnboundedSender<Delivery>,
    shared: Arc<Shared>,
}

/// The receiving side, held by the connection.
pub struct MailboxReceiver {
    rx: mpsc::UnboundedReceiver<Delivery>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub enum Received {
    Delivery(Delivery),
    /// More than the byte limit was queued: close the connection so it resumes.
    Overflowed,
    /// Every sender is gone.
    Closed,
}

fn weight(d: &Delivery) -> usize {
    d.event.payload.get().len() + d.event.name.len() + 64
}

impl Mailbox {
    pub fn new(limit_bytes: usize) -> (Mailbox, MailboxReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            limit_bytes,
            overflowed: AtomicBool::new(false),
        });
        (
            Mailbox {
                tx,
                shared: shared.clone(),
            },
            MailboxReceiver { rx, shared },
        )
    }

    /// Queues a delivery; `false` when the receiver is gone. Past the byte limit the mailbox
    /// is marked overflowed (the delivery is still queued so the receiver wakes up and sees it).
    pub fn offer(&self, d: Delivery) -> bool {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return !self.tx.is_closed();
        }
        let queued = self
            .shared
            .queued_bytes
            .fetch_add(weight(&d), Ordering::Relaxed)
            + weight(&d);
        if queued > self.shared.limit_bytes {
            self.shared.overflowed.store(true, Ordering::Relaxed);
        }
        self.tx.send(d).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn same(&self, other: &Mailbox) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl MailboxReceiver {
    pub async fn recv(&mut self) -> Received {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return Received::Overflowed;
        }
        match self.rx.recv().await {
            Some(d) => self.take(d),
            None => Received::Closed,
        }
    }

    /// The next delivery if one is queued now; for batching several records per frame.
    pub fn try_recv(&mut self) -> Option<Received> {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return Some(Received::Overflowed);
        }
        self.rx.try_recv().ok().map(|d| self.take(d))
    }

    fn take(&mut self, d: Delivery) -> Received {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return Received::Overflowed;
        }
        self.shared
            .queued_bytes
            .fetch_sub(weight(&d), Ordering::Relaxed);
        Received::Delivery(d)
    }

    /// Bytes queued and not yet received.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Position;
    use herald_domain::{Audience, EventId, OutboundEvent};

    fn delivery(n: u64) -> Delivery {
        let ev = OutboundEvent {
            event_id: EventId::parse(&format!("e{n}")).unwrap(),
            name: "SpendUpdate".into(),
            key_id: None,
            timestamp: chrono::Utc::now(),
            traceparent: None,
            payload: serde_json::value::to_raw_value(&serde_json::json!({"n": n})).unwrap(),
        };
        Delivery {
            audience: Audience::Global,
            position: Position { ms: n, seq: 0 },
            event: Arc::new(ev),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_overflows_past_the_limit() {
        let (mb, mut rx) = Mailbox::new(250);
        assert!(mb.offer(delivery(1)));
        match rx.recv().await {
            Received::Delivery(d) => assert_eq!(d.position.ms, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.queued_bytes(), 0);
        for n in 2..10 {
            mb.offer(delivery(n));
        }
        assert!(matches!(rx.recv().await, Received::Overflowed));
        drop(mb);
        let (mb2, mut rx2) = Mailbox::new(1000);
        drop(mb2);
        assert!(matches!(rx2.recv().await, Received::Closed));
    }
}
