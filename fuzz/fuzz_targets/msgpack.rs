//! SignalR MessagePack hub protocol messages (crates/gateway/src/msgpack.rs): every message a
//! MessagePack client sends after the handshake, split at its VarInt length prefix and parsed
//! as the session does (bounded length and depth, never a panic); and the messages the server
//! writes back, which must parse again.
#![no_main]
use herald_gateway::msgpack::{close, completion_error, parse_message, take_message};
use herald_gateway::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;

/// The session's limit on a client message.
const MAX: usize = 32 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match take_message(rest, MAX) {
            Ok(Some((message, tail))) => {
                assert!(message.len() <= MAX);
                assert!(message.len() + tail.len() < rest.len());
                check(message);
                rest = tail;
            }
            Ok(None) => break,
            Err(reason) => {
                assert!(reason.len() <= 200, "refusal of {} bytes", reason.len());
                break;
            }
        }
    }
    // The whole input as one message too (what a length prefix in front of it would give).
    if data.len() <= MAX {
        check(data);
    }
});

fn one(bytes: &[u8]) -> &[u8] {
    let (m, tail) = take_message(bytes, usize::MAX)
        .expect("the server's prefix is valid")
        .expect("the server's message is complete");
    assert!(tail.is_empty());
    m
}

fn check(message: &[u8]) {
    match parse_message(message) {
        Err(reason) => {
            // A refusal is sent back in a Close, which must itself parse.
            assert!(reason.chars().count() <= 200, "refusal of {} chars", reason.chars().count());
            let reply = close(Some(&reason), false);
            assert_eq!(
                parse_message(one(&reply)),
                Ok(ClientMessage::Close {
                    error: Some(reason)
                })
            );
        }
        Ok(ClientMessage::Invocation {
            invocation_id: Some(id),
            target,
            ..
        }) => {
            // The reply echoes the invocation id whatever its characters; a client reads it
            // as a Completion (ignored by the server's own parser).
            let reply = completion_error(&id, &target);
            assert_eq!(parse_message(one(&reply)), Ok(ClientMessage::Ignored));
        }
        Ok(_) => {}
    }
}
