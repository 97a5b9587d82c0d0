//! Resume cursors (crates/gateway/src/cursor.rs): the `?cursor=` of connect and the argument of
//! `Resume(cursor)`, decoded as the gateway does. Round trips: a decoded cursor encodes to text
//! that decodes to the same cursor; a cursor built from the input's bytes does too.
#![no_main]
use herald_backplane::Position;
use herald_domain::{Audience, KeyId};
use herald_gateway::cursor::Cursor;
use libfuzzer_sys::fuzz_target;

fn check_round_trip(c: &Cursor) {
    let text = c.encode();
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not URL-safe: {text:?}"
    );
    if text.len() <= 2048 {
        assert_eq!(Cursor::decode(&text).as_ref(), Ok(c), "text {text:?}");
    } else {
        // Longer than any cursor the server makes (a connection has at most its key, global
        // and admin): refused, not parsed.
        assert!(Cursor::decode(&text).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(c) = Cursor::decode(s)
    {
        check_round_trip(&c);
    }
    // Up to 40 entries of 17 bytes: audience selector, ms, seq (past about 22 the text is over
    // the 2048-character limit).
    let mut c = Cursor::default();
    for chunk in data.chunks_exact(17).take(40) {
        let n = u64::from_le_bytes(chunk[1..9].try_into().expect("8 bytes"));
        let audience = match chunk[0] % 3 {
            0 => Audience::Global,
            1 => Audience::Admin,
            _ => match KeyId::new((n >> 1) as i64) {
                Ok(id) => Audience::Key(id),
                Err(_) => continue,
            },
        };
        let seq = u64::from_le_bytes(chunk[9..17].try_into().expect("8 bytes"));
        c.set(audience, Position { ms: n, seq });
        assert_eq!(c.get(audience), Some(Position { ms: n, seq }));
    }
    check_round_trip(&c);
});
