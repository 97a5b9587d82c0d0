//! This node's one reply inbox for the requests it relays to other nodes: answers come back on
//! `reply:<node's random id>` tagged with the request's number, instead of a relay name (a Redis
//! SUBSCRIBE and UNSUBSCRIBE) per request, which queued up behind each other under load (long
//! polling through a round-robin balancer relays about every other poll).
use herald_backplane::{BackplaneError, SharedBackplane};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OnceCell, oneshot};

type Pending = Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>;

pub(crate) struct Replies {
    name: String,
    next: AtomicU64,
    pending: Arc<Pending>,
    listening: OnceCell<()>,
}

/// A request waiting for its answer; dropping it forgets the request.
pub(crate) struct Waiting {
    pub(crate) number: u64,
    pub(crate) answer: oneshot::Receiver<Vec<u8>>,
    pending: Arc<Pending>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.number);
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<u8>>>> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Replies {
    pub(crate) fn new() -> Self {
        Self {
            name: format!("reply:{}", crate::token::new_connection_id()),
            next: AtomicU64::new(1),
            pending: Arc::default(),
            listening: OnceCell::new(),
        }
    }

    /// Where answers go.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Registers a request (listening on the inbox first, once per node).
    pub(crate) async fn expect(
        &self,
        backplane: &SharedBackplane,
        split: fn(&[u8]) -> Option<u64>,
    ) -> Result<Waiting, BackplaneError> {
        self.listening
            .get_or_try_init(|| async {
                let mut inbox = backplane.relay_listen(&self.name).await?;
                let pending = self.pending.clone();
                tokio::spawn(async move {
                    while let Some(message) = inbox.recv().await {
                        let Some(number) = split(&message) else {
                            tracing::warn!("undecodable relayed answer; ignored");
                            continue;
                        };
                        if let Some(tx) = lock(&pending).remove(&number) {
                            let _ = tx.send(message);
                        }
                    }
                });
                Ok::<(), BackplaneError>(())
            })
            .await?;
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, answer) = oneshot::channel();
        lock(&self.pending).insert(number, tx);
        Ok(Waiting {
            number,
            answer,
            pending: self.pending.clone(),
        })
    }
}
