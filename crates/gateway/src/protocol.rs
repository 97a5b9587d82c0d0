//! The ASP.NET Core SignalR JSON hub protocol (dotnet/aspnetcore `src/SignalR/docs/specs/
//! HubProtocol.md`): handshake, records terminated by 0x1e, message types, and the encoding of
//! what the server sends. Pure functions; no I/O.
//!
//! Every error text the server sends (a handshake error, a Completion error, a Close reason)
//! quotes at most 64 bytes of one client input (`herald_domain::invalid::prefix`) and is cut
//! at 300 bytes (`MAX_REASON`) whatever it holds.
use herald_domain::invalid::{MAX_REASON, bounded, prefix};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;

/// The record separator that terminates every JSON message.
pub const RS: u8 = 0x1e;
pub const RS_CHAR: char = '\u{1e}';

/// Message types of the hub protocol.
pub mod kind {
    pub const INVOCATION: u8 = 1;
    pub const STREAM_ITEM: u8 = 2;
    pub const COMPLETION: u8 = 3;
    pub const STREAM_INVOCATION: u8 = 4;
    pub const CANCEL_INVOCATION: u8 = 5;
    pub const PING: u8 = 6;
    pub const CLOSE: u8 = 7;
}

/// The successful handshake response.
pub const HANDSHAKE_OK: &str = "{}\u{1e}";
/// A keep-alive ping.
pub const PING: &str = "{\"type\":6}\u{1e}";

/// Splits off the first complete record of `buf` (without its separator), if there is one.
pub fn take_record(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = buf.iter().position(|&b| b == RS)?;
    Some((&buf[..at], &buf[at + 1..]))
}

#[derive(Deserialize)]
struct HandshakeRequest {
    protocol: String,
    version: u32,
}

/// The newest JSON hub protocol version understood, as in ASP.NET Core 8.
pub const JSON_PROTOCOL_VERSION: u32 = 2;
/// The newest MessagePack hub protocol version understood, as in ASP.NET Core 8.
pub const MSGPACK_PROTOCOL_VERSION: u32 = 2;

/// The hub protocol a connection chose at its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Text records ending in 0x1e.
    Json,
    /// Binary messages, each with a VarInt length prefix (`crate::msgpack`).
    MessagePack,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }
}

/// Checks a handshake request record. `Err` carries the text of the handshake error response.
pub fn parse_handshake(record: &[u8]) -> Result<Protocol, String> {
    let req: HandshakeRequest = serde_json::from_slice(record).map_err(|_| {
        "Handshake request is not valid JSON of the form {\"protocol\":\"json\",\"version\":1}."
            .to_owned()
    })?;
    let (protocol, newest) = if req.protocol.eq_ignore_ascii_case("json") {
        (Protocol::Json, JSON_PROTOCOL_VERSION)
    } else if req.protocol.eq_ignore_ascii_case("messagepack") {
        (Protocol::MessagePack, MSGPACK_PROTOCOL_VERSION)
    } else {
        return Err(format!(
            "The protocol '{}' is not supported; this server speaks 'json' and 'messagepack'.",
            prefix(&req.protocol)
        ));
    };
    // As ASP.NET Core: every version up to its own (2) is accepted; versions 0 and 1 (older
    // clients, e.g. Python's signalrcore asks for 0) and 2 carry the same messages here.
    if req.version > newest {
        return Err(format!(
            "The server does not support version {} of the '{}' protocol.",
            req.version,
            protocol.name()
        ));
    }
    Ok(protocol)
}

/// The handshake error for a binary protocol on a text-only transport: ASP.NET Core's text,
/// and what it means here.
pub fn binary_on_text_transport(protocol: Protocol) -> String {
    format!(
        "Cannot use the '{}' protocol on the current transport. The transport does not support \
         'Binary' transfer format: MessagePack cannot be carried over Server-Sent Events; use \
         WebSockets or long polling, or the 'json' protocol.",
        protocol.name()
    )
}

/// A message from the client, as far as the server cares.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
    },
    StreamInvocation {
        invocation_id: Option<String>,
        target: String,
    },
    /// Stream items, completions (client results) and cancellations: the server offers no
    /// streams or client results, so these are accepted and ignored.
    Ignored,
    Ping,
    Close {
        error: Option<String>,
    },
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, rename = "invocationId")]
    invocation_id: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    arguments: Option<Vec<Value>>,
    #[serde(default)]
    error: Option<String>,
}

/// Parses one record. `Err` is a short reason, sent back in a Close message.
pub fn parse_message(record: &[u8]) -> Result<ClientMessage, String> {
    let raw: RawMessage = serde_json::from_slice(record)
        .map_err(|e| format!("Invalid message: {}", bounded(&e.to_string(), 120)))?;
    let target = |raw: &RawMessage| {
        raw.target
            .clone()
            .ok_or_else(|| "Invalid message: invocation without target".to_owned())
    };
    Ok(match raw.kind {
        kind::INVOCATION => ClientMessage::Invocation {
            target: target(&raw)?,
            invocation_id: raw.invocation_id,
            arguments: raw.arguments.unwrap_or_default(),
        },
        kind::STREAM_INVOCATION => ClientMessage::StreamInvocation {
            target: target(&raw)?,
            invocation_id: raw.invocation_id,
        },
        kind::STREAM_ITEM | kind::COMPLETION | kind::CANCEL_INVOCATION => ClientMessage::Ignored,
        kind::PING => ClientMessage::Ping,
        kind::CLOSE => ClientMessage::Close { error: raw.error },
        other => return Err(format!("Invalid message: unknown message type {other}")),
    })
}

/// An error text as sent: at most `MAX_REASON` bytes (the quotes in it are bounded already;
/// this holds whatever a future message puts in).
fn reason(error: &str) -> std::borrow::Cow<'_, str> {
    bounded(error, MAX_REASON)
}

fn json_str(s: &str) -> String {
    // Serializing a str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// `{"error":"..."}` + RS.
pub fn handshake_error(error: &str) -> String {
    format!("{{\"error\":{}}}{RS_CHAR}", json_str(&reason(error)))
}

/// A Close message, with an error and whether the client should reconnect.
pub fn close(error: Option<&str>, allow_reconnect: bool) -> String {
    let mut s = String::from("{\"type\":7");
    if let Some(e) = error {
        let _ = write!(s, ",\"error\":{}", json_str(&reason(e)));
    }
    if allow_reconnect {
        s.push_str(",\"allowReconnect\":true");
    }
    s.push('}');
    s.push(RS_CHAR);
    s
}

/// A Completion with a result (`result` is JSON text).
pub fn completion_result(invocation_id: &str, result: &str) -> String {
    format!(
        "{{\"type\":3,\"invocationId\":{},\"result\":{result}}}{RS_CHAR}",
        json_str(invocation_id)
    )
}

/// A Completion with an error (a HubException message on the client).
pub fn completion_error(invocation_id: &str, error: &str) -> String {
    format!(
        "{{\"type\":3,\"invocationId\":{},\"error\":{}}}{RS_CHAR}",
        json_str(invocation_id),
        json_str(&reason(error))
    )
}

/// Appends an Invocation of `target` with one object argument: `payload` (a serialized JSON
/// object) with `"cursor"` spliced in before its closing brace, so the payload's bytes (and its
/// exact decimal digits) are never re-parsed or re-serialized.
pub fn push_invocation(buf: &mut String, target: &str, payload: &str, cursor: Option<&str>) {
    buf.push_str("{\"type\":1,\"target\":");
    buf.push_str(&json_str(target));
    buf.push_str(",\"arguments\":[");
    let body = payload.trim_end();
    match (cursor, body.strip_suffix('}')) {
        (Some(cursor), Some(head)) if body.trim_start().starts_with('{') => {
            let empty = head
                .trim_start()
                .strip_prefix('{')
                .is_some_and(|inner| inner.trim().is_empty());
            buf.push_str(head);
            if !empty {
                buf.push(',');
            }
            buf.push_str("\"cursor\":");
            buf.push_str(&json_str(cursor));
            buf.push('}');
        }
        // Not an object: sent as it is (no cursor can be attached).
        _ => buf.push_str(body),
    }
    buf.push_str("]}");
    buf.push(RS_CHAR);
}

/// Appends an Invocation with positional arguments (Conduit's `TaskProgress(taskId, progress,
/// message)` and friends). These carry no cursor.
/// An Invocation with `arguments`, a JSON array already serialized (Conduit's positional
/// task methods).
pub fn push_positional_raw(buf: &mut String, target: &str, arguments: &str) {
    buf.push_str("{\"type\":1,\"target\":");
    buf.push_str(&json_str(target));
    buf.push_str(",\"arguments\":");
    buf.push_str(arguments);
    buf.push('}');
    buf.push(RS_CHAR);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_accepts_json_and_messagepack_up_to_version_2() {
        assert_eq!(
            parse_handshake(br#"{"protocol":"json","version":1}"#),
            Ok(Protocol::Json)
        );
        assert_eq!(
            parse_handshake(br#"{"protocol":"messagepack","version":1}"#),
            Ok(Protocol::MessagePack)
        );
        assert!(
            parse_handshake(br#"{"protocol":"messagepack","version":3}"#)
                .unwrap_err()
                .contains("version 3 of the 'messagepack'")
        );
        assert!(
            parse_handshake(br#"{"protocol":"xml","version":1}"#)
                .unwrap_err()
                .contains("'xml' is not supported")
        );
        for v in 0..=2 {
            let req = format!(r#"{{"protocol":"json","version":{v}}}"#);
            assert_eq!(
                parse_handshake(req.as_bytes()),
                Ok(Protocol::Json),
                "version {v}"
            );
        }
        assert!(
            parse_handshake(br#"{"protocol":"json","version":3}"#)
                .unwrap_err()
                .contains("version 3")
        );
        assert!(parse_handshake(b"nonsense").is_err());
        assert!(parse_handshake(br#"{"protocol":"json"}"#).is_err());
    }

    #[test]
    fn records_split_on_the_separator() {
        let buf = b"{\"type\":6}\x1e{\"type\":7}\x1e{\"ty";
        let (a, rest) = take_record(buf).unwrap();
        assert_eq!(a, b"{\"type\":6}");
        let (b, rest) = take_record(rest).unwrap();
        assert_eq!(b, b"{\"type\":7}");
        assert_eq!(take_record(rest), None);
    }

    #[test]
    fn messages_parse_by_type() {
        assert_eq!(
            parse_message(br#"{"type":1,"invocationId":"3","target":"Resume","arguments":["c"]}"#),
            Ok(ClientMessage::Invocation {
                invocation_id: Some("3".into()),
                target: "Resume".into(),
                arguments: vec![Value::String("c".into())]
            })
        );
        assert_eq!(parse_message(br#"{"type":6}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse_message(br#"{"type":7,"error":"x"}"#),
            Ok(ClientMessage::Close {
                error: Some("x".into())
            })
        );
        assert!(parse_message(br#"{"type":99}"#).is_err());
        assert!(parse_message(br#"{"type":1}"#).is_err());
        assert!(parse_message(b"[").is_err());
    }

    #[test]
    fn invocation_splices_the_cursor_without_reparsing() {
        let mut buf = String::new();
        push_invocation(
            &mut buf,
            "SpendUpdate",
            r#"{"totalSpend":12.50,"newSpend":0.000123}"#,
            Some("abc"),
        );
        assert_eq!(
            buf,
            "{\"type\":1,\"target\":\"SpendUpdate\",\"arguments\":[{\"totalSpend\":12.50,\"newSpend\":0.000123,\"cursor\":\"abc\"}]}\u{1e}"
        );
        buf.clear();
        push_invocation(&mut buf, "X", "{ }", Some("c"));
        assert_eq!(
            buf,
            "{\"type\":1,\"target\":\"X\",\"arguments\":[{ \"cursor\":\"c\"}]}\u{1e}"
        );
        buf.clear();
        push_invocation(&mut buf, "X", "[1]", Some("c"));
        assert_eq!(
            buf,
            "{\"type\":1,\"target\":\"X\",\"arguments\":[[1]]}\u{1e}"
        );
    }

    #[test]
    fn error_texts_quote_a_bounded_prefix_of_client_input() {
        let long = "x".repeat(20_000);
        let handshake = format!(r#"{{"protocol":"{long}","version":1}}"#);
        let e = parse_handshake(handshake.as_bytes()).unwrap_err();
        assert!(e.len() < 200 && e.contains("(20000 bytes)"), "{e}");
        let record = format!(r#"{{"type":"{long}"}}"#);
        let e = parse_message(record.as_bytes()).unwrap_err();
        assert!(e.len() < 200, "{e}");
        // Whatever an error holds, what is sent stays bounded.
        let sent = completion_error("1", &long);
        assert!(sent.len() < MAX_REASON + 100, "{}", sent.len());
        let sent = close(Some(&long), false);
        assert!(sent.len() < MAX_REASON + 100, "{}", sent.len());
        assert!(handshake_error(&long).len() < MAX_REASON + 100);
    }

    #[test]
    fn close_and_completion_encode() {
        assert_eq!(
            close(Some("bye"), true),
            "{\"type\":7,\"error\":\"bye\",\"allowReconnect\":true}\u{1e}"
        );
        assert_eq!(close(None, false), "{\"type\":7}\u{1e}");
        assert_eq!(
            completion_error("1", "no \"x\""),
            "{\"type\":3,\"invocationId\":\"1\",\"error\":\"no \\\"x\\\"\"}\u{1e}"
        );
        assert_eq!(
            completion_result("1", "null"),
            "{\"type\":3,\"invocationId\":\"1\",\"result\":null}\u{1e}"
        );
    }
}
