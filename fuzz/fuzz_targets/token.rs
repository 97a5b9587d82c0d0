//! Connection tokens (crates/gateway/src/token.rs): the `?id=` every transport presents after
//! negotiate, verified as routes.rs does. Properties: nothing but a token signed with the
//! secret verifies; any token signed from the input's fields verifies to the same fields
//! (unless a field holds the payload's separator, then it is refused); a flipped byte in a
//! signed token is refused.
#![no_main]
use herald_gateway::token::{ConnectionToken, TokenError, sign, verify};
use libfuzzer_sys::fuzz_target;

/// The secret the seed corpus's valid tokens are signed with.
const SECRET: &[u8] = b"fuzz-secret";
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = verify(SECRET, s, NOW) {
            // Accepted: then it is exactly what the secret signs for these fields (the fuzzer
            // cannot forge a tag; seeds carry valid ones), and no other secret accepts it.
            assert!(t.expires > NOW);
            assert_eq!(
                verify(b"another secret", s, NOW),
                Err(TokenError::BadSignature)
            );
        }
    }
    // The input as fields: hub, principal, id separated by 0xff, the last 8 bytes the expiry.
    if data.len() < 8 {
        return;
    }
    let (fields, expiry) = data.split_at(data.len() - 8);
    let expires = i64::from_le_bytes(expiry.try_into().expect("8 bytes"));
    let mut parts = fields.split(|&b| b == 0xff).map(String::from_utf8_lossy);
    let t = ConnectionToken {
        hub: parts.next().unwrap_or_default().into_owned(),
        principal: parts.next().unwrap_or_default().into_owned(),
        expires,
        connection_id: parts.next().unwrap_or_default().into_owned(),
    };
    let signed = sign(SECRET, &t);
    let verified = verify(SECRET, &signed, NOW);
    let has_newline = [&t.hub, &t.principal, &t.connection_id]
        .iter()
        .any(|f| f.contains('\n'));
    if signed.len() > 1024 || has_newline {
        assert_eq!(verified, Err(TokenError::Malformed));
    } else if expires <= NOW {
        assert_eq!(verified, Err(TokenError::Expired));
    } else {
        assert_eq!(verified.as_ref(), Ok(&t));
        // Any single changed character is refused.
        let mut bytes = signed.clone().into_bytes();
        let at = (expires.unsigned_abs() as usize) % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).expect("ASCII");
        assert!(
            verify(SECRET, &flipped, NOW).is_err(),
            "flipped at {at}: {flipped}"
        );
    }
});
