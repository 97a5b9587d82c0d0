//! Server-Sent Events and long polling without sticky sessions (docs/decisions.md, "Fallback
//! transports without sticky sessions"). The first GET of a negotiated connection starts its
//! session on the node it lands on, which claims the connection id across the cluster and
//! listens for it on the backplane relay. Every later request (polls, sends, DELETE) may land on
//! any node: the holder answers it directly, any other node relays it to the holder and hands
//! back its answer. A holder that dies takes its connections with it; clients reconnect and
//! resume from their cursor, as over WebSockets.
pub(crate) mod held;
pub(crate) mod replies;
mod requests;

use held::Kind;

use crate::node::NodeState;
use crate::session::{self, Setup};
use crate::wire::{RelayWire, Wire};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use held::{Answer, Held, Op};
use herald_telemetry::metrics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Client messages a connection may have waiting for its session (each one POST body).
const INBOUND_SLOTS: usize = 8;
/// Records waiting for the event stream or the next poll; a client that stops reading fills
/// them and the session's write deadline closes it.
const OUTBOUND_SLOTS: usize = 256;

/// What a request asks, after the hub, the credential and the connection token checked out.
pub(crate) enum Request {
    /// `GET` with `Accept: text/event-stream`.
    EventStream,
    /// `GET` otherwise: a long poll (the first one starts the connection).
    Poll,
    /// `POST`: client messages.
    Send(Bytes),
    /// `DELETE`: the client is done.
    Delete,
}

fn relay_name(id: &str) -> String {
    format!("conn:{id}")
}

/// Serves `request` for connection `id`. `start` builds the session's setup when this request
/// starts the connection (only a first GET does).
pub(crate) async fn serve<F, Fut>(
    gw: &Arc<NodeState>,
    id: &str,
    request: Request,
    start: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Setup, Response>>,
{
    let (op, body) = match request {
        Request::EventStream => {
            if gw.held.get(id).is_some() || !claim(gw, id).await {
                return Answer::text(
                    StatusCode::CONFLICT,
                    "this connection has already started; negotiate a new one",
                )
                .into_response();
            }
            return begin(gw, id, Kind::ServerSentEvents, start).await;
        }
        Request::Poll => (Op::Poll, Bytes::new()),
        Request::Send(body) => (Op::Send, body),
        Request::Delete => (Op::Delete, Bytes::new()),
    };
    if let Some(held) = gw.held.get(id) {
        return held.handle(gw, id, op, body).await.into_response();
    }
    match forward(gw, id, op, &body).await {
        Ok(Some(answer)) => return answer.into_response(),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "relaying a request to its connection's node failed");
            return Answer::text(StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable")
                .into_response();
        }
    }
    // Nobody holds it: a first poll starts it, once per connection token. So does a first
    // send: ASP.NET Core's connections exist from negotiate on, and some clients (Python's
    // signalrcore) send the handshake before they poll.
    if matches!(op, Op::Poll | Op::Send) && claim(gw, id).await {
        let response = begin(gw, id, Kind::LongPolling, start).await;
        if op == Op::Poll || !response.status().is_success() {
            return response;
        }
        if let Some(held) = gw.held.get(id) {
            return held.handle(gw, id, op, body).await.into_response();
        }
    }
    Answer::text(
        StatusCode::NOT_FOUND,
        "no such connection: it ended, or the node holding it stopped; reconnect",
    )
    .into_response()
}

async fn claim(gw: &NodeState, id: &str) -> bool {
    let ttl = gw.config.connection_token_ttl.max(Duration::from_secs(60));
    match gw.backplane.relay_claim(&relay_name(id), ttl).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "claiming a connection id failed");
            false
        }
    }
}

/// Starts the session of a new connection on this node and answers its first request.
async fn begin<F, Fut>(gw: &Arc<NodeState>, id: &str, kind: Kind, start: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Setup, Response>>,
{
    let setup = match start().await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let inbox = match gw.backplane.relay_listen(&relay_name(id)).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "listening for a connection's requests failed");
            return Answer::text(StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable")
                .into_response();
        }
    };
    let (in_tx, in_rx) = futures_channel::mpsc::channel(INBOUND_SLOTS);
    let (out_tx, out_rx) = futures_channel::mpsc::channel(OUTBOUND_SLOTS);
    let held = Held::new(kind, in_tx, out_rx);
    gw.held.insert(id, held.clone());
    metrics().transports_opened.with(kind.metric_label()).inc();
    tokio::spawn(listen(gw.clone(), id.to_owned(), held.clone(), inbox));
    let wire = Wire::Relay(RelayWire {
        inbound: in_rx,
        outbound: out_tx,
        text_only: kind == Kind::ServerSentEvents,
        closed: false,
    });
    let session = session::run(wire, gw.clone(), setup);
    let (node, conn, h) = (gw.clone(), id.to_owned(), held.clone());
    tokio::spawn(async move {
        session.await;
        // A poller that never comes back would otherwise keep it; the event stream removes
        // its own when it ends.
        let grace = node.config.long_poll_timeout.saturating_mul(2);
        node.held.remove_later(conn, h, grace);
    });
    match kind {
        Kind::ServerSentEvents => held.event_stream(gw.clone(), id.to_owned()).await,
        // The transport's first poll returns at once and empty: the connection is up.
        Kind::LongPolling => Answer {
            status: StatusCode::OK,
            body: Bytes::new(),
        }
        .into_response(),
    }
}

/// A request relayed to the node that holds the connection.
#[derive(Serialize, Deserialize)]
struct Relayed {
    op: Op,
    /// Where the answer goes: the relaying node's reply inbox ...
    reply: String,
    /// ... and the request's number there.
    request: u64,
}

/// The holder's answer.
#[derive(Serialize, Deserialize)]
struct Relayback {
    status: u16,
    request: u64,
}

/// The request number of an answer (for the reply inbox).
fn answer_number(message: &[u8]) -> Option<u64> {
    decode::<Relayback>(message).map(|(head, _)| head.request)
}

/// `head` as a JSON line, then `body` as it is.
fn encode<T: Serialize>(head: &T, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn decode<T: serde::de::DeserializeOwned>(message: &[u8]) -> Option<(T, &[u8])> {
    let split = message.iter().position(|&b| b == b'\n')?;
    let head = serde_json::from_slice(&message[..split]).ok()?;
    Some((head, &message[split + 1..]))
}

/// `Ok(None)` when no node holds the connection.
async fn forward(
    gw: &NodeState,
    id: &str,
    op: Op,
    body: &[u8],
) -> Result<Option<Answer>, herald_backplane::BackplaneError> {
    let mut waiting = gw.replies.expect(&gw.backplane, answer_number).await?;
    let relayed = Relayed {
        op,
        reply: gw.replies.name().to_owned(),
        request: waiting.number,
    };
    if !gw
        .backplane
        .relay_send(&relay_name(id), encode(&relayed, body))
        .await?
    {
        return Ok(None);
    }
    let wait = match op {
        Op::Poll => gw.config.long_poll_timeout + Duration::from_secs(10),
        _ => gw.config.client_timeout + Duration::from_secs(5),
    };
    // `waiting` stays until the answer came or the wait ended: dropping it forgets the request.
    let answer = match tokio::time::timeout(wait, &mut waiting.answer).await {
        Ok(Ok(message)) => decode::<Relayback>(&message).map(|(head, body)| Answer {
            status: StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY),
            body: Bytes::copy_from_slice(body),
        }),
        _ => None,
    };
    Ok(Some(answer.unwrap_or_else(|| {
        Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node holding this connection did not answer; reconnect",
        )
    })))
}

/// The holder's side of the relay: answers the requests other nodes relay for `held`.
async fn listen(
    gw: Arc<NodeState>,
    id: String,
    held: Arc<Held>,
    mut inbox: herald_backplane::RelayInbox,
) {
    let mut over = held.over();
    loop {
        let message = tokio::select! {
            m = inbox.recv() => m,
            _ = over.wait_for(|v| *v) => None,
        };
        let Some(message) = message else { break };
        let Some((head, body)) = decode::<Relayed>(&message) else {
            tracing::warn!("undecodable relayed request; ignored");
            continue;
        };
        let body = Bytes::copy_from_slice(body);
        let (gw, id, held) = (gw.clone(), id.clone(), held.clone());
        tokio::spawn(async move {
            let answer = held.handle(&gw, &id, head.op, body).await;
            let polled = head.op == Op::Poll && !answer.body.is_empty();
            let message = encode(
                &Relayback {
                    status: answer.status.as_u16(),
                    request: head.request,
                },
                &answer.body,
            );
            let delivered = gw.backplane.relay_send(&head.reply, message).await;
            // The relaying node or its client went away: the records go in the next poll.
            if polled && !matches!(delivered, Ok(true)) {
                held.keep_unsent(answer.body);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_message_is_a_json_line_and_the_body_as_is() {
        let m = encode(
            &Relayed {
                op: Op::Send,
                reply: "reply:x".into(),
                request: 7,
            },
            b"{\"type\":6}\x1e\n",
        );
        let (head, body) = decode::<Relayed>(&m).unwrap();
        assert_eq!(head.op, Op::Send);
        assert_eq!(head.reply, "reply:x");
        assert_eq!(head.request, 7);
        assert_eq!(body, b"{\"type\":6}\x1e\n");
        assert!(decode::<Relayed>(b"no line break").is_none());
        assert!(decode::<Relayed>(b"{}\n").is_none());
    }
}
