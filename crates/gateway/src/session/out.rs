//! What a session reads and writes, in the hub protocol its client chose at the handshake: JSON
//! records in text frames, or MessagePack messages in binary frames (docs/protocol.md,
//! "MessagePack"). Frames are built and client messages split and parsed here; the session only
//! sends and handles them.
use crate::msgpack::{self, Split};
use crate::protocol::{self, ClientMessage, Protocol};
use axum::extract::ws::Message;
use herald_domain::{Outbound, OutboundEvent};

/// One frame for the client, or the buffer it is gathered in.
pub(crate) enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    /// An empty buffer for `p`.
    pub(super) fn new(p: Protocol) -> Self {
        match p {
            Protocol::Json => Frame::Text(String::new()),
            Protocol::MessagePack => Frame::Binary(Vec::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame gathered so far; `self` is empty again.
    pub(super) fn take(&mut self) -> Frame {
        match self {
            Frame::Text(t) => Frame::Text(std::mem::take(t)),
            Frame::Binary(b) => Frame::Binary(std::mem::take(b)),
        }
    }

    pub(super) fn into_message(self) -> Message {
        match self {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Binary(b) => Message::Binary(b.into()),
        }
    }

    /// Appends the event's Invocation, its object with `cursor` added.
    pub(super) fn push_event(&mut self, ev: &OutboundEvent, cursor: Option<&str>) {
        match self {
            Frame::Text(t) => {
                protocol::push_invocation(t, ev.name.name(), ev.payload.get(), cursor);
            }
            Frame::Binary(b) => msgpack::push_event(b, ev, cursor),
        }
    }

    /// Appends Conduit's positional Invocation `method` of a task event.
    pub(super) fn push_positional(&mut self, method: Outbound, ev: &OutboundEvent) {
        match self {
            Frame::Text(t) => {
                if let Some(args) = ev.task.as_ref().and_then(|t| t.args.as_ref()) {
                    protocol::push_positional_raw(t, method.name(), args.get());
                }
            }
            Frame::Binary(b) => msgpack::push_positional(b, method, ev),
        }
    }

    /// Appends an Invocation whose one argument is `payload` (a JSON object made for this
    /// connection, e.g. `ResumeGap`'s) with `cursor` added.
    pub(super) fn push_object(&mut self, target: &str, payload: &str, cursor: Option<&str>) {
        match self {
            Frame::Text(t) => protocol::push_invocation(t, target, payload, cursor),
            Frame::Binary(b) => {
                let form = msgpack::object_form(payload, &[]);
                msgpack::push_object(b, target, &form, cursor);
            }
        }
    }
}

/// Splits off the next complete client message of `buf`; `Err` is a Close reason.
pub(super) fn take_message(
    p: Protocol,
    buf: &[u8],
    max: usize,
) -> Result<Option<Split<'_>>, String> {
    match p {
        Protocol::Json => Ok(protocol::take_record(buf)),
        Protocol::MessagePack => msgpack::take_message(buf, max),
    }
}

/// A JSON record of whitespace only, which clients may send between records.
pub(super) fn is_blank(p: Protocol, record: &[u8]) -> bool {
    p == Protocol::Json && record.iter().all(u8::is_ascii_whitespace)
}

pub(super) fn parse_message(p: Protocol, record: &[u8]) -> Result<ClientMessage, String> {
    match p {
        Protocol::Json => protocol::parse_message(record),
        Protocol::MessagePack => msgpack::parse_message(record),
    }
}

pub(super) fn ping(p: Protocol) -> Frame {
    match p {
        Protocol::Json => Frame::Text(protocol::PING.to_owned()),
        Protocol::MessagePack => Frame::Binary(msgpack::ping()),
    }
}

pub(super) fn close(p: Protocol, error: Option<&str>, allow_reconnect: bool) -> Frame {
    match p {
        Protocol::Json => Frame::Text(protocol::close(error, allow_reconnect)),
        Protocol::MessagePack => Frame::Binary(msgpack::close(error, allow_reconnect)),
    }
}

/// `result` is JSON text.
pub(super) fn completion_result(p: Protocol, invocation_id: &str, result: &str) -> Frame {
    match p {
        Protocol::Json => Frame::Text(protocol::completion_result(invocation_id, result)),
        Protocol::MessagePack => Frame::Binary(msgpack::completion_result(invocation_id, result)),
    }
}

pub(super) fn completion_error(p: Protocol, invocation_id: &str, error: &str) -> Frame {
    match p {
        Protocol::Json => Frame::Text(protocol::completion_error(invocation_id, error)),
        Protocol::MessagePack => Frame::Binary(msgpack::completion_error(invocation_id, error)),
    }
}

/// The successful handshake answer: JSON text for both protocols, in a binary frame for
/// MessagePack (whose clients read only binary frames after choosing it).
pub(super) fn handshake_ok(p: Protocol) -> Frame {
    match p {
        Protocol::Json => Frame::Text(protocol::HANDSHAKE_OK.to_owned()),
        Protocol::MessagePack => Frame::Binary(protocol::HANDSHAKE_OK.as_bytes().to_vec()),
    }
}
