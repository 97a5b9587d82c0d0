//! What each request of a held connection does: a poll, a send, a DELETE, the event stream.
use super::held::{Answer, Held, Kind, Op};
use crate::node::NodeState;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

/// A poll answers with at most about this much; the rest waits for the next poll.
const POLL_BODY_TARGET: usize = 1024 * 1024;

impl Held {
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
                Some(t) => body.extend_from_slice(&t),
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
                Some(Some(t)) => body.extend_from_slice(&t),
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
            // Text only: a binary protocol is refused at the handshake on this transport.
            Some((Ok(sse_event(&String::from_utf8_lossy(&record))), (out, end)))
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
