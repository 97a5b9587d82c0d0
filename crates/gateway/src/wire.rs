//! What a session reads client messages from and writes records to: a WebSocket, or the pair of
//! queues behind Server-Sent Events and long polling (POST bodies in; records out to the event
//! stream or the next poll). The session is the same for all three transports.
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use futures_channel::mpsc;
use futures_util::{Sink, Stream};
use std::pin::Pin;
use std::task::{Context, Poll};

// WebSockets are the common case, and boxing the socket would only move the same bytes to
// another allocation per connection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Wire {
    WebSocket(WebSocket),
    Relay(RelayWire),
}

/// The session's side of a Server-Sent Events or long-polling connection.
pub(crate) struct RelayWire {
    /// Bodies of the client's POSTs; ends when the client is gone (DELETE, stream closed).
    pub(crate) inbound: mpsc::Receiver<Vec<u8>>,
    /// Records for the client (JSON text, or MessagePack over long polling), bounded: a
    /// client that stops polling stops the session's writes, and the write deadline closes it.
    pub(crate) outbound: mpsc::Sender<Bytes>,
    /// Server-Sent Events: the transport carries text only (no MessagePack).
    pub(crate) text_only: bool,
    /// The session closed its side: nothing more is read.
    pub(crate) closed: bool,
}

fn gone() -> axum::Error {
    axum::Error::new(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "client gone",
    ))
}

impl Wire {
    /// Whether the transport carries only text (Server-Sent Events), not binary messages.
    pub(crate) fn text_only(&self) -> bool {
        matches!(self, Wire::Relay(r) if r.text_only)
    }
}

impl Stream for Wire {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Wire::WebSocket(ws) => Pin::new(ws).poll_next(cx),
            Wire::Relay(r) if r.closed => Poll::Ready(None),
            Wire::Relay(r) => Pin::new(&mut r.inbound)
                .poll_next(cx)
                .map(|body| body.map(|b| Ok(Message::Binary(b.into())))),
        }
    }
}

impl Sink<Message> for Wire {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Wire::WebSocket(ws) => Pin::new(ws).poll_ready(cx),
            Wire::Relay(r) if r.closed => Poll::Ready(Err(gone())),
            Wire::Relay(r) => r.outbound.poll_ready(cx).map_err(|_| gone()),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        match self.get_mut() {
            Wire::WebSocket(ws) => Pin::new(ws).start_send(item),
            Wire::Relay(r) => match item {
                Message::Text(_) | Message::Binary(_) => {
                    r.outbound.start_send(item.into_data()).map_err(|_| gone())
                }
                // The end of the connection: the event stream ends, the next poll gets 204.
                Message::Close(_) => {
                    r.closed = true;
                    r.outbound.close_channel();
                    Ok(())
                }
                // Pings are SignalR records; WebSocket control frames mean nothing here.
                _ => Ok(()),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Wire::WebSocket(ws) => Pin::new(ws).poll_flush(cx),
            Wire::Relay(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Wire::WebSocket(ws) => Pin::new(ws).poll_close(cx),
            Wire::Relay(r) => {
                r.closed = true;
                r.outbound.close_channel();
                Poll::Ready(Ok(()))
            }
        }
    }
}
