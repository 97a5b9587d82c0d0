//! The SignalR handshake (crates/gateway/src/protocol.rs): the first bytes a client sends on
//! any transport, split into records at 0x1e and the first one parsed as the handshake request.
#![no_main]
use herald_gateway::protocol::{RS, handshake_error, parse_handshake, take_record};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut first = true;
    while let Some((record, tail)) = take_record(rest) {
        // A record is everything before the first separator; nothing is lost or added.
        assert!(!record.contains(&RS));
        assert_eq!(record.len() + 1 + tail.len(), rest.len());
        if first {
            if let Err(reason) = parse_handshake(record) {
                // The refusal is one well-formed JSON record, whatever the input echoed.
                let reply = handshake_error(&reason);
                let body = reply
                    .strip_suffix('\u{1e}')
                    .expect("ends with the separator");
                let v: Value = serde_json::from_str(body).expect("handshake error is JSON");
                assert_eq!(v["error"].as_str(), Some(reason.as_str()));
                // Echoed input is truncated: a refusal never grows with the input.
                assert!(
                    reason.chars().count() <= 200,
                    "refusal of {} chars",
                    reason.chars().count()
                );
            }
            first = false;
        }
        rest = tail;
    }
});
