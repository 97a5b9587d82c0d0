//! The ASP.NET Core SignalR MessagePack hub protocol (dotnet/aspnetcore `src/SignalR/docs/specs/
//! HubProtocol.md`, "MessagePack (MsgPack) encoding"): each message is a MessagePack array
//! preceded by its length as a VarInt (7 bits a byte, least significant first, at most 5 bytes).
//! Pure functions; no I/O. Writing uses `rmp`'s encoders, reading `rmpv`'s reader with a depth
//! bound (docs/decisions.md, "MessagePack: rmpv").
//!
//! How Herald's values are carried (docs/protocol.md, "MessagePack"):
//! - an event's object becomes a map with the same keys; `cursor` is a string, as in JSON;
//! - a JSON integer becomes a MessagePack integer; any other JSON number (a fraction or an
//!   exponent) becomes a string of exactly its JSON digits (`"6.50"`);
//! - the money fields of `SpendUpdate` and `BudgetAlert` (`herald_domain::outbound::
//!   decimal_fields`) are always strings, whole numbers too (`"65"`), as .NET's MessagePack
//!   serializer writes `System.Decimal`;
//! - the payload's part is encoded once per event and node ([`event_form`]); per connection only
//!   the envelope, the map header and the cursor are written around it.
use crate::protocol::ClientMessage;
use crate::protocol::kind;
use herald_domain::invalid::{MAX_REASON, bounded};
use herald_domain::outbound::{BinaryForm, decimal_fields};
use herald_domain::{Outbound, OutboundEvent};
use rmp::encode as w;
use rmpv::Value as Mp;
use serde_json::Value;

/// Nesting allowed in a client message (arrays and maps inside the message's array).
pub const MAX_DEPTH: usize = 32;

/// A VarInt length prefix has at most this many bytes (lengths below 2^35).
const MAX_PREFIX: usize = 5;

/// Completion result kinds.
pub mod result_kind {
    pub const ERROR: u8 = 1;
    pub const VOID: u8 = 2;
    pub const NON_VOID: u8 = 3;
}

// Writing into a `Vec<u8>` cannot fail; `rmp` still returns a `Result` for other writers.
fn str(buf: &mut Vec<u8>, s: &str) {
    let _ = w::write_str(buf, s);
}

fn array_len(buf: &mut Vec<u8>, n: u32) {
    let _ = w::write_array_len(buf, n);
}

fn map_len(buf: &mut Vec<u8>, n: u32) {
    let _ = w::write_map_len(buf, n);
}

/// Appends `n` as a VarInt.
fn varint(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

/// Appends one message: `body` writes the MessagePack array, which is then given its prefix.
fn message(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    body(buf);
    let mut prefix = Vec::with_capacity(MAX_PREFIX);
    varint(&mut prefix, buf.len() - start);
    buf.splice(start..start, prefix);
}

fn one(body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::new();
    message(&mut buf, body);
    buf
}

/// A keep-alive Ping: `[6]`.
pub fn ping() -> Vec<u8> {
    one(|b| {
        array_len(b, 1);
        let _ = w::write_uint(b, u64::from(kind::PING));
    })
}

/// A Close: `[7, error or nil, allowReconnect]`.
pub fn close(error: Option<&str>, allow_reconnect: bool) -> Vec<u8> {
    one(|b| {
        array_len(b, 3);
        let _ = w::write_uint(b, u64::from(kind::CLOSE));
        match error {
            Some(e) => str(b, &bounded(e, MAX_REASON)),
            None => {
                let _ = w::write_nil(b);
            }
        }
        let _ = w::write_bool(b, allow_reconnect);
    })
}

fn completion_head(b: &mut Vec<u8>, len: u32, invocation_id: &str, result_kind: u8) {
    array_len(b, len);
    let _ = w::write_uint(b, u64::from(kind::COMPLETION));
    map_len(b, 0);
    str(b, invocation_id);
    let _ = w::write_uint(b, u64::from(result_kind));
}

/// A Completion with a result: `[3, {}, id, 3, result]`; `result` is JSON text (what the hub
/// methods answer), carried as the same value.
pub fn completion_result(invocation_id: &str, result: &str) -> Vec<u8> {
    let value: Value = serde_json::from_str(result).unwrap_or(Value::Null);
    one(|b| {
        completion_head(b, 5, invocation_id, result_kind::NON_VOID);
        write_json(b, &value);
    })
}

/// A Completion with an error: `[3, {}, id, 1, error]`.
pub fn completion_error(invocation_id: &str, error: &str) -> Vec<u8> {
    one(|b| {
        completion_head(b, 5, invocation_id, result_kind::ERROR);
        str(b, &bounded(error, MAX_REASON));
    })
}

/// A JSON value as MessagePack: integers as integers, other numbers as strings of their digits.
pub fn write_json(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => {
            let _ = w::write_nil(b);
        }
        Value::Bool(x) => {
            let _ = w::write_bool(b, *x);
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = w::write_sint(b, i);
            } else if let Some(u) = n.as_u64() {
                let _ = w::write_uint(b, u);
            } else {
                str(b, &n.to_string());
            }
        }
        Value::String(s) => str(b, s),
        Value::Array(items) => {
            array_len(b, u32::try_from(items.len()).unwrap_or(u32::MAX));
            for item in items {
                write_json(b, item);
            }
        }
        Value::Object(map) => {
            map_len(b, u32::try_from(map.len()).unwrap_or(u32::MAX));
            for (k, item) in map {
                str(b, k);
                write_json(b, item);
            }
        }
    }
}

/// A JSON object (text) as the entries of a map, without their header; `money` names the
/// top-level fields carried as strings whatever their value. Not an object: the whole value.
pub fn object_form(payload: &str, money: &[&str]) -> BinaryForm {
    let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let mut form = BinaryForm::default();
    match &payload {
        Value::Object(map) => {
            for (k, item) in map {
                str(&mut form.payload, k);
                match item {
                    Value::Number(n) if money.contains(&k.as_str()) => {
                        str(&mut form.payload, &n.to_string());
                    }
                    _ => write_json(&mut form.payload, item),
                }
            }
            form.payload_fields = Some(u32::try_from(map.len()).unwrap_or(u32::MAX));
        }
        other => write_json(&mut form.payload, other),
    }
    form
}

/// The event's payload (and task arguments) encoded once: the map's entries without their
/// header, so that each connection can add `cursor` after them.
pub fn event_form(ev: &OutboundEvent) -> BinaryForm {
    let mut form = object_form(ev.payload.get(), decimal_fields(ev.name));
    if let Some(args) = ev.task.as_ref().and_then(|t| t.args.as_ref()) {
        let args: Value = serde_json::from_str(args.get()).unwrap_or(Value::Array(Vec::new()));
        let mut out = Vec::new();
        match &args {
            Value::Array(_) => write_json(&mut out, &args),
            other => {
                array_len(&mut out, 1);
                write_json(&mut out, other);
            }
        }
        form.args = Some(out);
    }
    form
}

/// The event's [`BinaryForm`], made on first use on this node.
pub fn form_of(ev: &OutboundEvent) -> &BinaryForm {
    ev.binary.get_or_init(|| event_form(ev))
}

/// `[1, {}, nil, target,` of an Invocation; the arguments and [`invocation_tail`] follow.
fn invocation_head(b: &mut Vec<u8>, target: &str) {
    array_len(b, 6);
    let _ = w::write_uint(b, u64::from(kind::INVOCATION));
    map_len(b, 0);
    let _ = w::write_nil(b);
    str(b, target);
}

/// The empty StreamIds that end an Invocation. The spec's full shape: some clients (Python's
/// signalrcore) index the sixth element unconditionally; the JS and .NET clients ignore it.
fn invocation_tail(b: &mut Vec<u8>) {
    array_len(b, 0);
}

/// Appends an Invocation of `name` with the event's object as its one argument, `cursor` added
/// as a last entry: `[1, {}, nil, target, [{…, "cursor": c}], []]`.
pub fn push_event(buf: &mut Vec<u8>, ev: &OutboundEvent, cursor: Option<&str>) {
    push_object(buf, ev.name.name(), form_of(ev), cursor);
}

/// As [`push_event`] for an already encoded form (`ResumeGap`, tests).
pub fn push_object(buf: &mut Vec<u8>, target: &str, form: &BinaryForm, cursor: Option<&str>) {
    message(buf, |b| {
        invocation_head(b, target);
        array_len(b, 1);
        match (form.payload_fields, cursor) {
            (Some(n), Some(c)) => {
                map_len(b, n.saturating_add(1));
                b.extend_from_slice(&form.payload);
                str(b, "cursor");
                str(b, c);
            }
            (Some(n), None) => {
                map_len(b, n);
                b.extend_from_slice(&form.payload);
            }
            // Not an object: sent as it is (no cursor can be attached).
            (None, _) => b.extend_from_slice(&form.payload),
        }
        invocation_tail(b);
    });
}

/// Appends Conduit's positional Invocation (`TaskProgress(taskId, progress, message)`, …) for a
/// task event; nothing when it has none.
pub fn push_positional(buf: &mut Vec<u8>, method: Outbound, ev: &OutboundEvent) {
    let Some(args) = &form_of(ev).args else {
        return;
    };
    message(buf, |b| {
        invocation_head(b, method.name());
        b.extend_from_slice(args);
        invocation_tail(b);
    });
}

/// A message (without its prefix) and the bytes after it.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// Splits off the first complete message of `buf` (without its prefix). `Ok(None)` until it is
/// all there; `Err` for a prefix longer than 5 bytes or a length above `max`.
pub fn take_message(buf: &[u8], max: usize) -> Result<Option<Split<'_>>, String> {
    let mut len: usize = 0;
    for (i, &byte) in buf.iter().enumerate().take(MAX_PREFIX) {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if len > max {
                return Err(format!("Message exceeds the maximum size of {max} bytes."));
            }
            let rest = &buf[i + 1..];
            if rest.len() < len {
                return Ok(None);
            }
            return Ok(Some((&rest[..len], &rest[len..])));
        }
    }
    if buf.len() >= MAX_PREFIX {
        return Err("Invalid message: length prefix longer than 5 bytes".to_owned());
    }
    Ok(None)
}

fn invalid(what: &str) -> String {
    format!("Invalid message: {what}")
}

fn as_id(v: Option<&Mp>) -> Result<Option<String>, String> {
    match v {
        None | Some(Mp::Nil) => Ok(None),
        Some(Mp::String(s)) => s
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| invalid("invocation id is not UTF-8")),
        Some(_) => Err(invalid("invocation id is not a string")),
    }
}

fn as_target(v: Option<&Mp>) -> Result<String, String> {
    match v {
        Some(Mp::String(s)) => s
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid("target is not UTF-8")),
        _ => Err(invalid("invocation without target")),
    }
}

fn headers_ok(v: Option<&Mp>) -> Result<(), String> {
    match v {
        Some(Mp::Map(_)) => Ok(()),
        _ => Err(invalid("headers are not a map")),
    }
}

/// A client's argument as the JSON value the hub methods take.
pub fn to_json(v: &Mp) -> Result<Value, String> {
    Ok(match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Value::from(n),
            (None, Some(n)) => Value::from(n),
            _ => Value::Null,
        },
        Mp::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(
            s.as_str()
                .ok_or_else(|| invalid("a string is not UTF-8"))?
                .to_owned(),
        ),
        Mp::Binary(_) | Mp::Ext(..) => Value::Null,
        Mp::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Mp::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, item) in entries {
                let key = match k {
                    Mp::String(s) => s
                        .as_str()
                        .ok_or_else(|| invalid("a map key is not UTF-8"))?
                        .to_owned(),
                    other => other.to_string(),
                };
                map.insert(key, to_json(item)?);
            }
            Value::Object(map)
        }
    })
}

/// Parses one message (without its prefix). `Err` is a short reason, sent back in a Close.
pub fn parse_message(bytes: &[u8]) -> Result<ClientMessage, String> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| invalid(&bounded(&e.to_string(), 120)))?;
    let Mp::Array(items) = value else {
        return Err(invalid("not an array"));
    };
    let kind = items
        .first()
        .and_then(Mp::as_u64)
        .ok_or_else(|| invalid("no message type"))?;
    Ok(match u8::try_from(kind).unwrap_or(u8::MAX) {
        kind::INVOCATION => {
            headers_ok(items.get(1))?;
            let invocation_id = as_id(items.get(2))?;
            let target = as_target(items.get(3))?;
            let arguments = match items.get(4) {
                Some(Mp::Array(args)) => args.iter().map(to_json).collect::<Result<_, _>>()?,
                _ => return Err(invalid("invocation without an arguments array")),
            };
            ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
            }
        }
        kind::STREAM_INVOCATION => {
            headers_ok(items.get(1))?;
            ClientMessage::StreamInvocation {
                invocation_id: as_id(items.get(2))?,
                target: as_target(items.get(3))?,
            }
        }
        kind::STREAM_ITEM | kind::COMPLETION | kind::CANCEL_INVOCATION => {
            headers_ok(items.get(1))?;
            ClientMessage::Ignored
        }
        kind::PING => ClientMessage::Ping,
        kind::CLOSE => ClientMessage::Close {
            error: match items.get(1) {
                Some(Mp::String(s)) => s.as_str().map(str::to_owned),
                _ => None,
            },
        },
        _ => return Err(invalid(&format!("unknown message type {kind}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Vec<Mp> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Some((m, tail)) = take_message(rest, 1 << 20).unwrap() {
            let mut rd = m;
            out.push(rmpv::decode::read_value(&mut rd).unwrap());
            assert!(rd.is_empty(), "the prefix is the message's length");
            rest = tail;
        }
        assert!(rest.is_empty());
        out
    }

    fn event(name: Outbound, payload: &str) -> OutboundEvent {
        serde_json::from_value(serde_json::json!({
            "eventId": "e-1", "name": name.name(), "timestamp": "2026-01-02T03:04:05Z",
            "payload": serde_json::from_str::<Value>(payload).unwrap(),
        }))
        .unwrap()
    }

    #[test]
    fn varint_lengths_round_trip_at_their_boundaries() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut b = Vec::new();
            varint(&mut b, n);
            b.resize(b.len() + n, 0);
            let (m, rest) = take_message(&b, usize::MAX).unwrap().unwrap();
            assert_eq!((m.len(), rest.len()), (n, 0), "{n}");
        }
        // Incomplete, too long, above the limit.
        assert_eq!(take_message(&[0x80], 100), Ok(None));
        assert_eq!(take_message(&[0x05, 1, 2], 100), Ok(None));
        assert!(take_message(&[0xff; 6], usize::MAX).is_err());
        assert!(
            take_message(&[0x80, 0x01], 100)
                .unwrap_err()
                .contains("maximum size")
        );
    }

    #[test]
    fn server_messages_have_the_specified_shapes() {
        assert_eq!(decode(&ping()), vec![Mp::Array(vec![Mp::from(6)])]);
        assert_eq!(
            decode(&close(Some("bye"), true)),
            vec![Mp::Array(vec![
                Mp::from(7),
                Mp::from("bye"),
                Mp::from(true)
            ])]
        );
        assert_eq!(
            decode(&close(None, false)),
            vec![Mp::Array(vec![Mp::from(7), Mp::Nil, Mp::from(false)])]
        );
        let headers = Mp::Map(Vec::new());
        assert_eq!(
            decode(&completion_error("1", "no")),
            vec![Mp::Array(vec![
                Mp::from(3),
                headers.clone(),
                Mp::from("1"),
                Mp::from(1),
                Mp::from("no")
            ])]
        );
        assert_eq!(
            decode(&completion_result("2", r#"{"replayed":3}"#)),
            vec![Mp::Array(vec![
                Mp::from(3),
                headers.clone(),
                Mp::from("2"),
                Mp::from(3),
                Mp::Map(vec![(Mp::from("replayed"), Mp::from(3))])
            ])]
        );
        let long = "x".repeat(20_000);
        assert!(close(Some(&long), false).len() < MAX_REASON + 100);
        assert!(completion_error("1", &long).len() < MAX_REASON + 100);
    }

    #[test]
    fn events_carry_exact_decimals_as_strings_and_the_cursor_last() {
        let ev = event(
            Outbound::SpendUpdate,
            r#"{"eventId":"s-1","virtualKeyId":42,"totalSpend":6.50,"newSpend":0.000123,"budgetPercentage":65,"model":"m"}"#,
        );
        let mut buf = Vec::new();
        push_event(&mut buf, &ev, Some("cur"));
        push_event(&mut buf, &ev, None);
        let msgs = decode(&buf);
        let Mp::Array(items) = &msgs[0] else { panic!() };
        assert_eq!(
            &items[..4],
            &[
                Mp::from(1),
                Mp::Map(vec![]),
                Mp::Nil,
                Mp::from("SpendUpdate")
            ]
        );
        assert_eq!(
            items.get(5),
            Some(&Mp::Array(vec![])),
            "empty StreamIds end an Invocation"
        );
        let Mp::Array(args) = &items[4] else { panic!() };
        let Mp::Map(entries) = &args[0] else { panic!() };
        let get = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("totalSpend"), Some(Mp::from("6.50")));
        assert_eq!(get("newSpend"), Some(Mp::from("0.000123")));
        // Money is text even when whole; other integers stay integers.
        assert_eq!(get("budgetPercentage"), Some(Mp::from("65")));
        assert_eq!(get("virtualKeyId"), Some(Mp::from(42)));
        assert_eq!(entries.last(), Some(&(Mp::from("cursor"), Mp::from("cur"))));
        let Mp::Array(items) = &msgs[1] else { panic!() };
        let Mp::Array(args) = &items[4] else { panic!() };
        assert!(matches!(&args[0], Mp::Map(e) if e.len() == 6));
        // Other fractions keep their digits as text too; the form is made once per event.
        let ev = event(
            Outbound::ProviderHealthChanged,
            r#"{"latencyMs":812.50,"n":-3,"big":18446744073709551615}"#,
        );
        assert!(ev.binary.get().is_none());
        let mut buf = Vec::new();
        push_event(&mut buf, &ev, Some("c"));
        assert!(ev.binary.get().is_some());
        let text = format!("{:?}", decode(&buf));
        assert!(
            text.contains("\"812.50\"")
                && text.contains("-3")
                && text.contains("18446744073709551615"),
            "{text}"
        );
    }

    #[test]
    fn client_messages_parse_by_type() {
        let mut b = Vec::new();
        let inv = Mp::Array(vec![
            Mp::from(1),
            Mp::Map(vec![]),
            Mp::from("7"),
            Mp::from("Resume"),
            Mp::Array(vec![Mp::from("c"), Mp::from(5), Mp::F64(1.5), Mp::Nil]),
        ]);
        rmpv::encode::write_value(&mut b, &inv).unwrap();
        assert_eq!(
            parse_message(&b),
            Ok(ClientMessage::Invocation {
                invocation_id: Some("7".into()),
                target: "Resume".into(),
                arguments: vec![
                    Value::from("c"),
                    Value::from(5),
                    serde_json::json!(1.5),
                    Value::Null
                ],
            })
        );
        let enc = |v: Mp| {
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &v).unwrap();
            b
        };
        assert_eq!(
            parse_message(&enc(Mp::Array(vec![Mp::from(6)]))),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_message(&enc(Mp::Array(vec![Mp::from(7), Mp::from("x")]))),
            Ok(ClientMessage::Close {
                error: Some("x".into())
            })
        );
        assert_eq!(
            parse_message(&enc(Mp::Array(vec![
                Mp::from(5),
                Mp::Map(vec![]),
                Mp::from("1")
            ]))),
            Ok(ClientMessage::Ignored)
        );
        assert!(matches!(
            parse_message(&enc(Mp::Array(vec![
                Mp::from(4),
                Mp::Map(vec![]),
                Mp::from("1"),
                Mp::from("S"),
                Mp::Array(vec![])
            ]))),
            Ok(ClientMessage::StreamInvocation { .. })
        ));
        for bad in [
            Mp::Array(vec![Mp::from(99)]),
            Mp::Array(vec![]),
            Mp::from("x"),
            Mp::Array(vec![Mp::from(1), Mp::Map(vec![]), Mp::Nil]),
            Mp::Array(vec![
                Mp::from(1),
                Mp::Nil,
                Mp::Nil,
                Mp::from("T"),
                Mp::Array(vec![]),
            ]),
            Mp::Array(vec![
                Mp::from(1),
                Mp::Map(vec![]),
                Mp::from(3),
                Mp::from("T"),
                Mp::Array(vec![]),
            ]),
            Mp::Array(vec![
                Mp::from(1),
                Mp::Map(vec![]),
                Mp::Nil,
                Mp::from("T"),
                Mp::Nil,
            ]),
        ] {
            assert!(parse_message(&enc(bad.clone())).is_err(), "{bad}");
        }
        // Truncated, and nested deeper than the bound: refused, no panic.
        assert!(parse_message(&[0x95, 0x01]).is_err());
        assert!(parse_message(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        let deep = [vec![0x91u8; 10_000], vec![0xc0]].concat();
        assert!(
            parse_message(&deep)
                .unwrap_err()
                .contains("Invalid message")
        );
    }
}
