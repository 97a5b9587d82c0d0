//! Decoding one bus message (docs/events.md, "The bus"): detect the envelope (MassTransit JSON or CloudEvents
//! 1.0 structured JSON), take the event id, time and trace context from it, and hand the inner
//! body to the domain's parser. Everything that can be wrong with a message from outside is an
//! [`Invalid`] with a short reason; nothing here panics on input.
use chrono::{DateTime, Utc};
use herald_domain::fields::{Fields, parse_time};
use herald_domain::{EventId, InboundEvent, InboundKind, Invalid, KeyRef};
use serde_json::Value;

/// Largest message body accepted. Conduit's events are a few hundred bytes; anything near this
/// is a bug or an attack, and parsing it would only cost memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the transport knows about a message besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageMeta {
    pub routing_key: String,
    pub content_type: Option<String>,
    /// The AMQP `type` property.
    pub message_type: Option<String>,
    /// W3C trace context from the AMQP headers (or HTTP header).
    pub traceparent: Option<String>,
}

/// The two accepted envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    CloudEvents,
    MassTransit,
}

/// Decodes and validates one message.
pub fn decode(body: &[u8], meta: &MessageMeta) -> Result<InboundEvent, Invalid> {
    let root = parse_json(body)?;
    let fields = Fields::of(&root).map_err(|_| Invalid::new("message is not a JSON object"))?;
    match detect(&fields) {
        Some(EnvelopeKind::CloudEvents) => decode_cloudevent(&fields, meta),
        Some(EnvelopeKind::MassTransit) => decode_masstransit(&fields, meta),
        None => Err(Invalid::new(
            "neither a MassTransit nor a CloudEvents envelope",
        )),
    }
}

/// Best effort: the event id of a message that may be invalid, for logs and the
/// `x-herald-event-id` header of a dead-lettered message.
pub fn peek_event_id(body: &[u8]) -> Option<EventId> {
    let root = parse_json(body).ok()?;
    let fields = Fields::of(&root).ok()?;
    let name = match detect(&fields)? {
        EnvelopeKind::CloudEvents => "id",
        EnvelopeKind::MassTransit => "messageId",
    };
    match fields.get(name)? {
        Value::String(s) => EventId::parse(s).ok(),
        Value::Number(n) => EventId::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// Which messages must be processed in order relative to each other: those of one key (spend
/// and key changes), of one task, and the global ones. Undecodable messages get a partition of
/// their own (they are dead-lettered, order does not matter).
pub fn partition(decoded: &Result<InboundEvent, Invalid>) -> String {
    match decoded {
        Ok(ev) => match &ev.kind {
            InboundKind::SpendUpdated(s) => match &s.key {
                KeyRef::Id(id) => format!("key:{id}"),
                KeyRef::Hash(h) => format!("hash:{h}"),
            },
            InboundKind::VirtualKey(k) => format!("key:{}", k.key_id),
            InboundKind::Task(t) => format!("task:{}", t.task_id),
            InboundKind::ProviderHealthChanged(_)
            | InboundKind::ModelsDiscovered(_)
            | InboundKind::ModelMappingChanged(_) => "global".to_owned(),
        },
        Err(_) => format!("bad:{}", rand::random::<u64>()),
    }
}

/// The short type name: the last segment after `:` or `.`
/// (`urn:message:ConduitLLM.Core.Events:SpendUpdated` and `com.conduit.SpendUpdated` are both
/// `SpendUpdated`).
pub fn short_type_name(name: &str) -> &str {
    let name = name.trim();
    name.rsplit([':', '.']).next().unwrap_or(name)
}

fn parse_json(body: &[u8]) -> Result<Value, Invalid> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Invalid::new(format!(
            "message body larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    // .NET writers sometimes prepend a UTF-8 byte order mark.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // serde_json stops at 128 levels of nesting with an error, so deep input cannot blow the
    // stack.
    serde_json::from_slice(body).map_err(|e| Invalid::new(format!("not valid JSON: {e}")))
}

fn detect(f: &Fields<'_>) -> Option<EnvelopeKind> {
    if f.get("specversion").is_some() {
        Some(EnvelopeKind::CloudEvents)
    } else if f.get("messageType").is_some() || f.get("message").is_some() {
        Some(EnvelopeKind::MassTransit)
    } else {
        None
    }
}

fn decode_masstransit(f: &Fields<'_>, meta: &MessageMeta) -> Result<InboundEvent, Invalid> {
    let id = event_id(f, "messageId")?;
    let types: Vec<&str> = match f.get("messageType") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(_) => return Err(Invalid::new("messageType must be a list of strings")),
        None => Vec::new(),
    };
    // Without messageType the AMQP type property may still name it.
    let types = if types.is_empty() {
        meta.message_type.as_deref().into_iter().collect()
    } else {
        types
    };
    let Some(first) = types.first() else {
        return Err(Invalid::new("missing field messageType"));
    };
    let body = inner_body(f, "message")?;
    // A message lists its type and the types it implements; the first one Herald knows wins.
    let mut kind = None;
    for t in &types {
        if let Some(k) = InboundKind::parse(short_type_name(t), &body)? {
            kind = Some(k);
            break;
        }
    }
    let kind = kind.ok_or_else(|| unknown_type(first))?;
    let traceparent = f
        .get("headers")
        .and_then(|h| Fields::of(h).ok())
        .and_then(|h| h.get("traceparent"))
        .and_then(Value::as_str)
        .and_then(valid_traceparent)
        .or_else(|| meta.traceparent.as_deref().and_then(valid_traceparent));
    Ok(InboundEvent {
        id,
        source_time: source_time(f, "sentTime")?,
        traceparent,
        kind,
    })
}

fn decode_cloudevent(f: &Fields<'_>, meta: &MessageMeta) -> Result<InboundEvent, Invalid> {
    match f.get("specversion") {
        Some(Value::String(v)) if v.trim() == "1.0" => {}
        Some(Value::String(v)) => {
            return Err(Invalid::new(format!(
                "unsupported CloudEvents specversion {:?}",
                truncate(v, 20)
            )));
        }
        _ => return Err(Invalid::new("CloudEvents specversion must be a string")),
    }
    let id = event_id(f, "id")?;
    let type_name = match f.get("type") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        Some(_) => return Err(Invalid::new("CloudEvents type must be a non-empty string")),
        None => return Err(Invalid::new("missing field type")),
    };
    if let Some(ct) = f.get("datacontenttype") {
        let ct = ct.as_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !(essence == "application/json" || essence == "text/json" || essence.ends_with("+json"))
        {
            return Err(Invalid::new(format!(
                "unsupported datacontenttype {:?}",
                truncate(&ct, 60)
            )));
        }
    }
    if f.get("data").is_none() && f.get("data_base64").is_some() {
        return Err(Invalid::new("data_base64 is not supported: send JSON data"));
    }
    let body = inner_body(f, "data")?;
    let kind = InboundKind::parse(short_type_name(type_name), &body)?
        .ok_or_else(|| unknown_type(type_name))?;
    let traceparent = f
        .get("traceparent")
        .and_then(Value::as_str)
        .and_then(valid_traceparent)
        .or_else(|| meta.traceparent.as_deref().and_then(valid_traceparent));
    Ok(InboundEvent {
        id,
        source_time: source_time(f, "time")?,
        traceparent,
        kind,
    })
}

fn event_id(f: &Fields<'_>, name: &str) -> Result<EventId, Invalid> {
    match f.get(name) {
        Some(Value::String(s)) => EventId::parse(s),
        Some(Value::Number(n)) => EventId::parse(&n.to_string()),
        Some(_) => Err(Invalid::new(format!("{name} must be a string"))),
        None => Err(Invalid::new(format!("missing field {name}"))),
    }
}

/// The event's own object. Some publishers put it in as a JSON string; that is accepted too.
fn inner_body(f: &Fields<'_>, name: &str) -> Result<Value, Invalid> {
    match f.get(name) {
        Some(Value::Object(_)) => f
            .get(name)
            .cloned()
            .ok_or_else(|| Invalid::new(format!("missing field {name}"))),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(Invalid::new(format!("{name} must be a JSON object"))),
        },
        Some(_) => Err(Invalid::new(format!("{name} must be a JSON object"))),
        None => Err(Invalid::new(format!("missing field {name}"))),
    }
}

fn source_time(f: &Fields<'_>, name: &str) -> Result<DateTime<Utc>, Invalid> {
    match f.get(name) {
        Some(Value::String(s)) => parse_time(name, s).map_err(|_| {
            Invalid::new(format!(
                "{name} is not an RFC 3339 time: {:?}",
                truncate(s, 40)
            ))
        }),
        Some(_) => Err(Invalid::new(format!("{name} must be a string"))),
        None => Ok(Utc::now()),
    }
}

fn unknown_type(name: &str) -> Invalid {
    Invalid::new(format!("unknown event type {}", truncate(name.trim(), 120)))
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; anything else is dropped rather than passed on, since trace
/// context is optional and must not carry junk into the backplane.
fn valid_traceparent(s: &str) -> Option<String> {
    let s = s.trim();
    let parts: Vec<&str> = s.split('-').collect();
    let ok = parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// At most `max` characters of `s`, for error messages built from input.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::{KeyId, KeyRef};

    fn meta() -> MessageMeta {
        MessageMeta::default()
    }

    fn spend(ev: &InboundEvent) -> &herald_domain::SpendUpdated {
        match &ev.kind {
            InboundKind::SpendUpdated(s) => s,
            #[allow(unreachable_patterns)]
            _ => panic!("not a SpendUpdated"),
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn masstransit_camel_case() {
        let body = format!(
            r#"{{"messageId":"m-1","conversationId":"c","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated","urn:message:ConduitLLM.Core.Events:IEvent"],
               "message":{{"keyId":42,"amount":0.000123,"newTotalSpend":12.50,"model":"gpt-4o"}},
               "sentTime":"2026-01-02T03:04:05.1234567Z","headers":{{"traceparent":"{TP}"}}}}"#
        );
        let ev = decode(body.as_bytes(), &meta()).unwrap();
        assert_eq!(ev.id.as_str(), "m-1");
        assert_eq!(
            herald_domain::fields::format_time(ev.source_time),
            "2026-01-02T03:04:05.123456700Z"
        );
        assert_eq!(ev.traceparent.as_deref(), Some(TP));
        let s = spend(&ev);
        assert_eq!(s.key, KeyRef::Id(KeyId::new(42).unwrap()));
        // Exact digits survive the envelope.
        assert_eq!(s.amount.to_string(), "0.000123");
        assert_eq!(s.new_total_spend.to_string(), "12.50");
    }

    #[test]
    fn masstransit_pascal_case_and_offset_free_time() {
        let body = br#"{"MessageId":"m-2","MessageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],
            "Message":{"KeyId":"7","Amount":"1.10","NewTotalSpend":3},"SentTime":"2026-01-02T03:04:05"}"#;
        let ev = decode(body, &meta()).unwrap();
        assert_eq!(ev.id.as_str(), "m-2");
        assert_eq!(
            herald_domain::fields::format_time(ev.source_time),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(ev.traceparent, None);
        assert_eq!(spend(&ev).amount.to_string(), "1.10");
    }

    #[test]
    fn masstransit_takes_trace_from_meta_when_envelope_has_none() {
        let body = br#"{"messageId":"m","messageType":["urn:message:X:SpendUpdated"],"message":{"keyId":1,"amount":1,"newTotalSpend":1}}"#;
        let m = MessageMeta {
            traceparent: Some(TP.into()),
            ..meta()
        };
        let ev = decode(body, &m).unwrap();
        assert_eq!(ev.traceparent.as_deref(), Some(TP));
        // No sentTime: received now.
        assert!((Utc::now() - ev.source_time).num_seconds().abs() < 60);
        // Junk trace context is dropped, not fatal.
        let m = MessageMeta {
            traceparent: Some("garbage".into()),
            ..meta()
        };
        assert_eq!(decode(body, &m).unwrap().traceparent, None);
    }

    #[test]
    fn masstransit_uses_amqp_type_when_message_type_is_absent() {
        let body = br#"{"messageId":"m","message":{"keyId":1,"amount":1,"newTotalSpend":1}}"#;
        let e = decode(body, &meta()).unwrap_err();
        assert_eq!(e.0, "missing field messageType");
        let m = MessageMeta {
            message_type: Some("SpendUpdated".into()),
            ..meta()
        };
        assert!(decode(body, &m).is_ok());
    }

    #[test]
    fn cloudevents_structured() {
        let body = format!(
            r#"{{"specversion":"1.0","id":"ce-1","source":"/billing","type":"SpendUpdated","time":"2026-01-02T03:04:05+01:00",
               "datacontenttype":"application/json","traceparent":"{TP}","data":{{"virtualKeyId":5,"amount":2.000,"newTotalSpend":99.990}}}}"#
        );
        let ev = decode(body.as_bytes(), &meta()).unwrap();
        assert_eq!(ev.id.as_str(), "ce-1");
        assert_eq!(
            herald_domain::fields::format_time(ev.source_time),
            "2026-01-02T02:04:05Z"
        );
        assert_eq!(ev.traceparent.as_deref(), Some(TP));
        let s = spend(&ev);
        assert_eq!(s.amount.to_string(), "2.000");
        assert_eq!(s.new_total_spend.to_string(), "99.990");
    }

    #[test]
    fn cloudevents_namespaced_type_names() {
        for t in [
            "com.conduit.SpendUpdated",
            "ConduitLLM.Core.Events:SpendUpdated",
            "spendupdated",
        ] {
            let body = format!(
                r#"{{"specversion":"1.0","id":"x","type":"{t}","data":{{"keyId":1,"amount":1,"newTotalSpend":1}}}}"#
            );
            assert!(decode(body.as_bytes(), &meta()).is_ok(), "{t}");
        }
        assert_eq!(short_type_name("urn:message:A.B:C"), "C");
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn cloudevents_refusals() {
        let ce = |extra: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"x","type":"SpendUpdated"{extra},"data":{{"keyId":1,"amount":1,"newTotalSpend":1}}}}"#
            )
        };
        let err = |b: String| decode(b.as_bytes(), &meta()).unwrap_err().0;
        assert!(err(ce(r#","datacontenttype":"application/xml""#)).contains("datacontenttype"));
        assert!(
            decode(
                ce(r#","datacontenttype":"application/cloudevents+json; charset=utf-8""#)
                    .as_bytes(),
                &meta()
            )
            .is_ok()
        );
        assert!(err(ce(r#","time":"yesterday""#)).contains("time is not an RFC 3339 time"));
        assert!(
            err(r#"{"specversion":"0.3","id":"x","type":"SpendUpdated","data":{}}"#.to_owned())
                .contains("specversion")
        );
        assert_eq!(
            err(r#"{"specversion":"1.0","id":"x","type":"SpendUpdated"}"#.to_owned()),
            "missing field data"
        );
        assert_eq!(
            err(r#"{"specversion":"1.0","id":"x","data":{}}"#.to_owned()),
            "missing field type"
        );
    }

    #[test]
    fn data_given_as_a_json_string_is_accepted() {
        let body = br#"{"specversion":"1.0","id":"x","type":"SpendUpdated","data":"{\"keyId\":1,\"amount\":0.10,\"newTotalSpend\":1}"}"#;
        let ev = decode(body, &meta()).unwrap();
        assert_eq!(spend(&ev).amount.to_string(), "0.10");
    }

    #[test]
    fn unknown_type_is_invalid() {
        let body =
            br#"{"messageId":"m","messageType":["urn:message:Acme:SomethingElse"],"message":{}}"#;
        assert_eq!(
            decode(body, &meta()).unwrap_err().0,
            "unknown event type urn:message:Acme:SomethingElse"
        );
        let body = br#"{"specversion":"1.0","id":"x","type":"com.acme.Nope","data":{}}"#;
        assert_eq!(
            decode(body, &meta()).unwrap_err().0,
            "unknown event type com.acme.Nope"
        );
    }

    #[test]
    fn missing_or_bad_id_is_invalid() {
        let body = br#"{"messageType":["urn:message:X:SpendUpdated"],"message":{"keyId":1,"amount":1,"newTotalSpend":1}}"#;
        assert_eq!(
            decode(body, &meta()).unwrap_err().0,
            "missing field messageId"
        );
        let body = br#"{"messageId":"  ","messageType":["urn:message:X:SpendUpdated"],"message":{"keyId":1,"amount":1,"newTotalSpend":1}}"#;
        assert_eq!(decode(body, &meta()).unwrap_err().0, "event id is empty");
        let body = br#"{"specversion":"1.0","type":"SpendUpdated","data":{"keyId":1,"amount":1,"newTotalSpend":1}}"#;
        assert_eq!(decode(body, &meta()).unwrap_err().0, "missing field id");
        let body = br#"{"specversion":"1.0","id":{},"type":"SpendUpdated","data":{}}"#;
        assert_eq!(decode(body, &meta()).unwrap_err().0, "id must be a string");
    }

    #[test]
    fn body_validation_errors_come_through() {
        let body = br#"{"messageId":"m","messageType":["urn:message:X:SpendUpdated"],"message":{"keyId":1,"amount":-1,"newTotalSpend":1}}"#;
        assert_eq!(decode(body, &meta()).unwrap_err().0, "amount is negative");
        let body =
            br#"{"messageId":"m","messageType":["urn:message:X:SpendUpdated"],"message":[1]}"#;
        assert_eq!(
            decode(body, &meta()).unwrap_err().0,
            "message must be a JSON object"
        );
    }

    #[test]
    fn garbage_and_non_objects_are_invalid() {
        for (body, want) in [
            (&b"\xff\xfe\x00garbage"[..], "not valid JSON"),
            (b"", "not valid JSON"),
            (b"{\"messageId\":", "not valid JSON"),
            (b"[1,2,3]", "message is not a JSON object"),
            (b"42", "message is not a JSON object"),
            (
                b"{\"hello\":\"world\"}",
                "neither a MassTransit nor a CloudEvents envelope",
            ),
        ] {
            let e = decode(body, &meta()).unwrap_err().0;
            assert!(e.starts_with(want), "{e}");
            assert!(e.len() < 200, "reasons stay short: {e}");
        }
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(br#"{"specversion":"1.0","id":"x","type":"SpendUpdated","data":{"keyId":1,"amount":1,"newTotalSpend":1}}"#);
        assert!(decode(&body, &meta()).is_ok());
    }

    #[test]
    fn huge_and_deep_input_does_not_panic() {
        let huge = format!(
            r#"{{"specversion":"1.0","id":"x","type":"SpendUpdated","data":{{"pad":"{}"}}}}"#,
            "a".repeat(MAX_BODY_BYTES)
        );
        assert!(
            decode(huge.as_bytes(), &meta())
                .unwrap_err()
                .0
                .contains("larger than")
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            decode(deep.as_bytes(), &meta())
                .unwrap_err()
                .0
                .starts_with("not valid JSON")
        );
        let deep_obj = format!(
            r#"{{"specversion":"1.0","id":"x","type":"SpendUpdated","data":{}1{}}}"#,
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(decode(deep_obj.as_bytes(), &meta()).is_err());
        let long_type = format!(
            r#"{{"specversion":"1.0","id":"x","type":"{}","data":{{}}}}"#,
            "é".repeat(10_000)
        );
        let e = decode(long_type.as_bytes(), &meta()).unwrap_err().0;
        assert!(e.starts_with("unknown event type") && e.len() < 400, "{e}");
    }

    #[test]
    fn peeks_the_id_of_invalid_messages() {
        let body = br#"{"messageId":"m-9","messageType":["urn:message:X:SpendUpdated"],"message":{"amount":-1}}"#;
        assert_eq!(
            peek_event_id(body).map(|e| e.to_string()),
            Some("m-9".into())
        );
        let body = br#"{"specversion":"1.0","id":"ce-9"}"#;
        assert_eq!(
            peek_event_id(body).map(|e| e.to_string()),
            Some("ce-9".into())
        );
        assert_eq!(peek_event_id(b"nope"), None);
    }
}
