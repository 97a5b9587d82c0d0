//! A Server-Sent Events or long-polling connection on the node that holds its session: the
//! queues between the session and the HTTP requests, and what each request does to them.
use crate::node::NodeState;
use axum::body::{Body, Bytes};
use axum::extract::ws::Utf8Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_channel::mpsc;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// A poll answers with at most about this much; the rest waits for the next poll.
const POLL_BODY_TARGET: usize = 1024 * 1024;

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
    inbound: tokio::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// The session's records, taken by the event stream or by polls.
    outbound: Arc<tokio::sync::Mutex<mpsc::Receiver<Utf8Bytes>>>,
    /// A poll's records that could not be handed to the relaying node: sent first next time.
    unsent: Mutex<Option<Bytes>>,
    /// Counts polls: a newer poll ends the one waiting (204), as the transport defines.
    polls: AtomicU64,
    newer_poll: Notify,
    /// Set when the connection is removed: its relay listener stops.
    over: watch::Sender<bool>,
}

impl Held {
    pub(crate) fn new(
        kind: Kind,
        inbound: mpsc::Sender<Vec<u8>>,
        outbound: mpsc::Receiver<Utf8Bytes>,
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
    fn end(&self) {
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

    /// Handles a request for this connection on the node that holds it.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        gw: &Arc<NodeState>,
        id: &str,
        op: Op,
        body: Bytes,
    ) -> Answer {
        match op {
            Op::Send => self.send(gw, body).await,
            Op::Delete => {
                gw.held.remove(id, self);
                Answer::text(StatusCode::ACCEPTED, "connection closed")
            }
            Op::Poll if self.kind != Kind::LongPolling => Answer::text(
                StatusCode::CONFLICT,
                "this connection uses Server-Sent Events; it cannot be polled",
            ),
            Op::Poll => self.poll(gw, id).await,
        }
    }

    async fn send(&self, gw: &NodeState, body: Bytes) -> Answer {
        let Some(mut tx) = self.inbound.lock().await.clone() else {
            return Answer::text(StatusCode::NOT_FOUND, "the connection has ended");
        };
        match tokio::time::timeout(gw.config.client_timeout, tx.send(body.to_vec())).await {
            Ok(Ok(())) => Answer {
                status: StatusCode::OK,
                body: Bytes::new(),
            },
            Ok(Err(_)) => Answer::text(StatusCode::NOT_FOUND, "the connection has ended"),
            Err(_) => Answer::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the connection is not taking messages; try again",
            ),
        }
    }

    /// Waits up to the poll timeout for records; answers 204 once the session has ended
    /// (and removes the connection), or when a newer poll took over.
    async fn poll(self: &Arc<Self>, gw: &Arc<NodeState>, id: &str) -> Answer {
        let me = self.polls.fetch_add(1, Ordering::AcqRel) + 1;
        self.newer_poll.notify_waiters();
        let superseded = async {
            loop {
                let n = self.newer_poll.notified();
                if self.polls.load(Ordering::Acquire) != me {
                    return;
                }
                n.await;
            }
        };
        tokio::pin!(superseded);
        let ended = Answer::text(StatusCode::NO_CONTENT, "");
        let mut out = tokio::select! {
            out = self.outbound.lock() => out,
            () = &mut superseded => return ended,
        };
        let unsent = self
            .unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut body = unsent.map(Vec::from).unwrap_or_default();
        if body.is_empty() {
            let first = tokio::select! {
                r = out.next() => r,
                () = tokio::time::sleep(gw.config.long_poll_timeout) => {
                    return Answer { status: StatusCode::OK, body: Bytes::new() };
                }
                () = &mut superseded => return ended,
            };
            match first {
                Some(t) => body.extend_from_slice(t.as_bytes()),
                None => {
                    drop(out);
                    gw.held.remove(id, self);
                    return Answer::text(StatusCode::NO_CONTENT, "");
                }
            }
        }
        // Whatever else is already waiting goes in the same answer.
        while body.len() < POLL_BODY_TARGET {
            match out.next().now_or_never() {
                Some(Some(t)) => body.extend_from_slice(t.as_bytes()),
                _ => break,
            }
        }
        Answer {
            status: StatusCode::OK,
            body: body.into(),
        }
    }

    /// The event stream of a Server-Sent Events connection: every record as one event. Ends
    /// when the session does; when the client goes away, dropping it removes the connection.
    pub(crate) async fn event_stream(self: Arc<Self>, gw: Arc<NodeState>, id: String) -> Response {
        let out = self.outbound.clone().lock_owned().await;
        let end = RemoveOnDrop { gw, id, held: self };
        // A comment first: the response head goes out at once and the browser fires `open`.
        let opening = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b":\r\n\r\n"))
        });
        let events = futures_util::stream::unfold((out, end), |(mut out, end)| async move {
            let record = out.next().await?;
            Some((Ok(sse_event(&record)), (out, end)))
        });
        let mut r = Body::from_stream(opening.chain(events)).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Proxies such as nginx would otherwise buffer the stream.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        r
    }
}

/// One SSE event carrying `record` (a line each; JSON records hold no line breaks).
fn sse_event(record: &str) -> Bytes {
    let mut out = String::with_capacity(record.len() + 16);
    for line in record.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

struct RemoveOnDrop {
    gw: Arc<NodeState>,
    id: String,
    held: Arc<Held>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.gw.held.remove(&self.id, &self.held);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_event_carries_each_line_as_data() {
        assert_eq!(
            &sse_event("{\"type\":6}\u{1e}")[..],
            b"data: {\"type\":6}\x1e\r\n\r\n"
        );
        assert_eq!(&sse_event("a\nb")[..], b"data: a\r\ndata: b\r\n\r\n");
    }
}
