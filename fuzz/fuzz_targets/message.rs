//! SignalR JSON hub protocol records (crates/gateway/src/protocol.rs): every record a client
//! sends after the handshake, parsed as the session does; and the records the server writes,
//! which a client must be able to parse back.
#![no_main]
use herald_gateway::protocol::{
    ClientMessage, close, completion_error, parse_message, push_invocation, take_record,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((record, tail)) = take_record(rest) {
        check(record);
        rest = tail;
    }
    // Without a separator the whole input is one record (the transports that carry whole
    // messages).
    check(rest);
});

fn check(record: &[u8]) {
    match parse_message(record) {
        Err(reason) => {
            // A refusal is sent back in a Close message: that record must itself parse.
            assert!(
                reason.chars().count() <= 200,
                "refusal of {} chars",
                reason.chars().count()
            );
            let reply = close(Some(&reason), false);
            let (r, tail) = take_record(reply.as_bytes()).expect("one record");
            assert!(tail.is_empty());
            assert_eq!(
                parse_message(r),
                Ok(ClientMessage::Close {
                    error: Some(reason)
                })
            );
        }
        Ok(ClientMessage::Invocation {
            invocation_id,
            target,
            ..
        }) => {
            // The server's replies echo the invocation id and name the target: both must
            // survive the round trip whatever their characters.
            if let Some(id) = invocation_id {
                let reply = completion_error(&id, &target);
                let body = reply
                    .strip_suffix('\u{1e}')
                    .expect("ends with the separator");
                let v: Value = serde_json::from_str(body).expect("completion is JSON");
                assert_eq!(v["invocationId"].as_str(), Some(id.as_str()));
                assert_eq!(v["error"].as_str(), Some(target.as_str()));
            }
            let mut buf = String::new();
            push_invocation(&mut buf, &target, r#"{"a":1}"#, Some(&target));
            let (r, _) = take_record(buf.as_bytes()).expect("one record");
            match parse_message(r) {
                Ok(ClientMessage::Invocation {
                    target: t,
                    arguments,
                    ..
                }) => {
                    assert_eq!(t, target);
                    assert_eq!(arguments.len(), 1);
                    assert_eq!(arguments[0]["cursor"].as_str(), Some(target.as_str()));
                }
                other => panic!("the server's own invocation does not parse: {other:?}"),
            }
        }
        Ok(_) => {}
    }
}
