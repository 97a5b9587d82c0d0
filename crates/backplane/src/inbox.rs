//! This node's listeners on relay names (crate::relay): what a relayed message is handed to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// Messages a listener may have waiting. A node's one reply inbox takes the answers to all the
/// requests it relays (about one per delivered batch under long polling), so this is large;
/// tokio's channel allocates its slots as they fill, not up front. A message that does not fit
/// is dropped (a local sender is told so): the relayed request times out, its client reconnects
/// and resumes from its cursor.
pub(crate) const INBOX_SLOTS: usize = 4096;

/// What a node receives on a name it listens to. Dropping it stops listening.
pub struct RelayInbox {
    rx: mpsc::Receiver<Vec<u8>>,
    _listening: Listening,
}

impl RelayInbox {
    /// The next message; `None` once the backplane is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
}

struct Listening {
    name: String,
    listeners: Arc<Listeners>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.listeners.remove(&self.name);
    }
}

/// This node's listeners by name, and who to tell when one leaves.
#[derive(Default)]
pub(crate) struct Listeners {
    map: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
    /// Called with each name whose listener left (the subscriber unsubscribes it).
    #[allow(clippy::type_complexity)]
    left: Mutex<Option<Box<dyn Fn(&str) + Send + Sync>>>,
}

impl Listeners {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Vec<u8>>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `name`; the inbox receives what [`Listeners::deliver`] hands it.
    pub(crate) fn add(self: &Arc<Self>, name: &str) -> RelayInbox {
        let (tx, rx) = mpsc::channel(INBOX_SLOTS);
        self.map().insert(name.to_owned(), tx);
        RelayInbox {
            rx,
            _listening: Listening {
                name: name.to_owned(),
                listeners: self.clone(),
            },
        }
    }

    fn remove(&self, name: &str) {
        self.map().remove(name);
        if let Some(tx) = self
            .left
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            tx(name);
        }
    }

    /// Hands `payload` to the local listener of `name`: false when there is none or its inbox
    /// is full.
    pub(crate) fn deliver(&self, name: &str, payload: Vec<u8>) -> bool {
        match self.map().get(name) {
            Some(tx) => tx.try_send(payload).is_ok(),
            None => false,
        }
    }

    /// `f` is told every name whose listener left.
    pub(crate) fn on_leave(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.left.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(f));
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }
}
