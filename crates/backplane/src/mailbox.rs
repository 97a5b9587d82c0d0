//! A per-connection outbound queue bounded in bytes (slow consumers: docs/protocol.md, "Close reasons"). When a
//! connection falls too far behind, its mailbox is marked overflowed: the connection is closed
//! with `allowReconnect` and resumes from its cursor, instead of slowing everyone else or
//! silently losing events.
//!
//! The queue is a `VecDeque` behind a mutex with one waker, not tokio's mpsc: the mpsc channel
//! allocates its first block of slots up front (~1.8 KB), which for an idle connection was the
//! largest piece of its memory. This queue allocates on its first delivery and gives the space
//! back once a burst has drained. There is one receiver and one producer at a time (the node's
//! router), so the lock is held for a push or a pop and never contended for long.
use crate::delivery::Delivery;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

/// A drained queue keeps at most this many slots; a burst's larger buffer is given back.
const KEEP_SLOTS: usize = 64;

struct Shared {
    queued_bytes: AtomicUsize,
    limit_bytes: usize,
    overflowed: AtomicBool,
    queue: Mutex<VecDeque<Delivery>>,
    /// The receiver's waker: woken by every delivery and by the last sender leaving.
    waker: AtomicWaker,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Delivery>> {
        // A panic while holding the lock cannot leave the queue half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side, held by the backplane's router.
pub struct Mailbox {
    shared: Arc<Shared>,
}

impl Clone for Mailbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Mailbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

/// The receiving side, held by the connection.
pub struct MailboxReceiver {
    shared: Arc<Shared>,
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.queue().clear();
    }
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
    d.event.payload.get().len() + d.event.name.name().len() + 64
}

impl Mailbox {
    pub fn new(limit_bytes: usize) -> (Mailbox, MailboxReceiver) {
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            limit_bytes,
            overflowed: AtomicBool::new(false),
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            senders: AtomicUsize::new(1),
            receiver_gone: AtomicBool::new(false),
        });
        (
            Mailbox {
                shared: shared.clone(),
            },
            MailboxReceiver { shared },
        )
    }

    /// Queues a delivery; `false` when the receiver is gone. Past the byte limit the mailbox
    /// is marked overflowed and takes nothing more (the receiver closes the connection, which
    /// resumes from its cursor).
    pub fn offer(&self, d: Delivery) -> bool {
        if self.is_closed() {
            return false;
        }
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return true;
        }
        let queued = self
            .shared
            .queued_bytes
            .fetch_add(weight(&d), Ordering::Relaxed)
            + weight(&d);
        if queued > self.shared.limit_bytes {
            self.shared.overflowed.store(true, Ordering::Relaxed);
        }
        self.shared.queue().push_back(d);
        self.shared.waker.wake();
        true
    }

    pub fn is_closed(&self) -> bool {
        self.shared.receiver_gone.load(Ordering::Acquire)
    }

    pub(crate) fn same(&self, other: &Mailbox) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl MailboxReceiver {
    pub async fn recv(&mut self) -> Received {
        poll_fn(|cx| {
            if let Some(r) = self.next_or_closed() {
                return Poll::Ready(r);
            }
            self.shared.waker.register(cx.waker());
            // Checked again after registering: a delivery between the first check and the
            // registration would otherwise wait for the next one.
            match self.next_or_closed() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next delivery if one is queued now; for batching several records per frame.
    pub fn try_recv(&mut self) -> Option<Received> {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return Some(Received::Overflowed);
        }
        let d = {
            let mut q = self.shared.queue();
            let d = q.pop_front()?;
            if q.is_empty() && q.capacity() > KEEP_SLOTS {
                q.shrink_to_fit();
            }
            d
        };
        self.shared
            .queued_bytes
            .fetch_sub(weight(&d), Ordering::Relaxed);
        Some(Received::Delivery(d))
    }

    /// What is queued, else `Closed` once every sender is gone, else nothing yet.
    fn next_or_closed(&mut self) -> Option<Received> {
        self.try_recv().or_else(|| {
            (self.shared.senders.load(Ordering::Acquire) == 0).then_some(Received::Closed)
        })
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
            name: herald_domain::Outbound::SpendUpdate,
            key_id: None,
            timestamp: chrono::Utc::now(),
            traceparent: None,
            payload: serde_json::value::to_raw_value(&serde_json::json!({"n": n})).unwrap(),
            task: None,
            binary: Default::default(),
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

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_delivery_and_sees_the_senders_leave() {
        let (mb, mut rx) = Mailbox::new(1 << 20);
        let copy = mb.clone();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second, rx)
        });
        tokio::task::yield_now().await;
        assert!(copy.offer(delivery(7)));
        drop(copy);
        drop(mb);
        let (first, second, rx) = waiting.await.unwrap();
        assert!(matches!(first, Received::Delivery(d) if d.position.ms == 7));
        assert!(matches!(second, Received::Closed), "{second:?}");
        assert_eq!(rx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_dropped_receiver_closes_the_mailbox_and_a_drained_burst_gives_its_space_back() {
        let (mb, mut rx) = Mailbox::new(1 << 30);
        for n in 0..1000 {
            assert!(mb.offer(delivery(n)));
        }
        for n in 0..1000 {
            assert!(matches!(rx.try_recv(), Some(Received::Delivery(d)) if d.position.ms == n));
        }
        assert!(rx.try_recv().is_none());
        assert!(rx.shared.queue().capacity() <= KEEP_SLOTS);
        drop(rx);
        assert!(mb.is_closed());
        assert!(!mb.offer(delivery(1)), "nobody to deliver to");
    }
}
