//! A Server-Sent Events or long-polling connection on the node that holds its session: the
//! queues between the session and the HTTP requests, and this node's registry of them.
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_channel::mpsc;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    ServerSentEvents,
    LongPolling,
}

impl Kind {
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Kind::ServerSentEvents => "server_sent_events",
            Kind::LongPolling => "long_polling",
        }
    }
}

/// What a request after the first asks of a held connection; also what is relayed to the
/// holding node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Poll,
    Send,
    Delete,
}

/// An HTTP answer as plain data, so that another node can send it back over the relay.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn text(status: StatusCode, text: &str) -> Self {
        Self {
            status,
            body: Bytes::from(format!("{text}\n")),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

pub(crate) struct Held {
    pub(crate) kind: Kind,
    /// Client messages to the session; `None` once the client said DELETE or is gone.
    pub(super) inbound: tokio::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// The session's records, taken by the event stream or by polls.
    pub(super) outbound: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    /// A poll's records that could not be handed to the relaying node: sent first next time.
    pub(super) unsent: Mutex<Option<Bytes>>,
    /// Counts polls: a newer poll ends the one waiting (204), as the transport defines.
    pub(super) polls: AtomicU64,
    pub(super) newer_poll: Notify,
    /// Set when the connection is removed: its relay listener stops.
    over: watch::Sender<bool>,
}

impl Held {
    pub(crate) fn new(
        kind: Kind,
        inbound: mpsc::Sender<Vec<u8>>,
        outbound: mpsc::Receiver<Bytes>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind,
            inbound: tokio::sync::Mutex::new(Some(inbound)),
            outbound: Arc::new(tokio::sync::Mutex::new(outbound)),
            unsent: Mutex::new(None),
            polls: AtomicU64::new(0),
            newer_poll: Notify::new(),
            over: watch::Sender::new(false),
        })
    }

    pub(crate) fn over(&self) -> watch::Receiver<bool> {
        self.over.subscribe()
    }

    /// Ends the connection from the client's side: the session reads no more and closes.
    pub(super) fn end(&self) {
        self.over.send_replace(true);
        if let Ok(mut inbound) = self.inbound.try_lock() {
            inbound.take();
        }
    }

    /// Records a poll could not deliver; they go first in the next poll's answer.
    pub(crate) fn keep_unsent(&self, body: Bytes) {
        let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
        *unsent = Some(match unsent.take() {
            Some(older) => [older, body].concat().into(),
            None => body,
        });
    }
}

/// The Server-Sent Events and long-polling connections this node holds, by connection id.
#[derive(Default)]
pub(crate) struct HeldConnections {
    map: Mutex<HashMap<String, Arc<Held>>>,
}

impl HeldConnections {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Held>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Held>> {
        self.map().get(id).cloned()
    }

    pub(crate) fn insert(&self, id: &str, held: Arc<Held>) {
        self.map().insert(id.to_owned(), held);
    }

    /// Removes `held` (and only it: not a later connection under the same id) and ends it.
    pub(crate) fn remove(&self, id: &str, held: &Arc<Held>) {
        let mut map = self.map();
        if map.get(id).is_some_and(|h| Arc::ptr_eq(h, held)) {
            map.remove(id);
        }
        drop(map);
        held.end();
    }

    /// Removes `held` after `grace` if nothing did before: a long-polling client that never
    /// polls again would otherwise leave its connection here.
    pub(crate) fn remove_later(self: &Arc<Self>, id: String, held: Arc<Held>, grace: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            this.remove(&id, &held);
        });
    }
}
