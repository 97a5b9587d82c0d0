//! Bus envelopes (MassTransit JSON, CloudEvents 1.0): the bytes of one AMQP message or of a
//! `POST /v1/events` body, decoded as the consumer does. Input: an optional AMQP `type`
//! property, then a NUL byte, then the body (no NUL: the whole input is the body).
#![no_main]
use herald_ingest::MessageMeta;
use herald_ingest::envelope::{decode, partition, peek_event_id, short_type_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (message_type, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (
            Some(String::from_utf8_lossy(&data[..at]).into_owned()),
            &data[at + 1..],
        ),
        None => (None, data),
    };
    let meta = MessageMeta {
        routing_key: "fuzz".to_owned(),
        content_type: Some("application/json".to_owned()),
        message_type: message_type.clone(),
        traceparent: None,
    };
    let decoded = decode(body, &meta);
    let _ = partition(&decoded);
    if let Some(t) = &message_type {
        // The short name is a suffix of the trimmed name.
        assert!(t.trim().ends_with(short_type_name(t)));
    }
    if let Ok(ev) = &decoded {
        // A decoded message has the id the dead-letter path would report for it.
        assert_eq!(peek_event_id(body).as_ref(), Some(&ev.id));
        // Decoding is a function of the bytes (no hidden state, no time): the same again.
        // source_time falls back to "now" when the envelope has none, so compare the rest.
        let again = decode(body, &meta).expect("decoded once, decodes again");
        assert_eq!(again.id, ev.id);
        assert_eq!(again.kind, ev.kind);
        assert_eq!(again.traceparent, ev.traceparent);
        assert_eq!(ev.kind.type_name(), ev.kind.spec().name);
    }
});
