//! Connection tokens (docs/protocol.md, "Negotiate"; no sticky sessions): negotiate hands out a token that any node
//! sharing the secret accepts, so no node keeps per-negotiate state. It is
//! `base64url(payload) "." base64url(HMAC-SHA256(secret, payload))` where the payload is
//! `v1\n{hub}\n{principal}\n{expiry unix seconds}\n{connection id}`.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionToken {
    /// Canonical hub name.
    pub hub: String,
    /// Who negotiated: a key hash, or `master`.
    pub principal: String,
    /// Unix seconds after which the token is refused.
    pub expires: i64,
    pub connection_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed connection token")]
    Malformed,
    #[error("connection token signature is invalid")]
    BadSignature,
    #[error("connection token expired")]
    Expired,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
}

pub fn sign(secret: &[u8], t: &ConnectionToken) -> String {
    let payload = format!(
        "v1\n{}\n{}\n{}\n{}",
        t.hub, t.principal, t.expires, t.connection_id
    );
    let mut m = mac(secret);
    m.update(payload.as_bytes());
    let tag = m.finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Checks the signature and expiry (`now` in unix seconds) and returns the token's contents.
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<ConnectionToken, TokenError> {
    if token.len() > 1024 {
        return Err(TokenError::Malformed);
    }
    let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(&payload);
    // `verify_slice` compares in constant time.
    m.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    let text = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let mut parts = text.split('\n');
    let (Some("v1"), Some(hub), Some(principal), Some(expires), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let expires: i64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if expires <= now {
        return Err(TokenError::Expired);
    }
    Ok(ConnectionToken {
        hub: hub.to_owned(),
        principal: principal.to_owned(),
        expires,
        connection_id: id.to_owned(),
    })
}

/// A fresh random connection id (16 bytes, URL-safe base64).
pub fn new_connection_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    URL_SAFE_NO_PAD.encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ConnectionToken {
        ConnectionToken {
            hub: "spend".into(),
            principal: "ab".repeat(32),
            expires: 1000,
            connection_id: "c1".into(),
        }
    }

    #[test]
    fn verifies_own_tokens_and_refuses_forged_or_expired() {
        let s = sign(b"secret", &token());
        assert_eq!(verify(b"secret", &s, 999), Ok(token()));
        assert_eq!(verify(b"secret", &s, 1000), Err(TokenError::Expired));
        assert_eq!(verify(b"other", &s, 0), Err(TokenError::BadSignature));
        let mut forged = token();
        forged.hub = "admin".into();
        let (_, tag) = s.split_once('.').unwrap();
        let f = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(format!(
                "v1\n{}\n{}\n{}\n{}",
                forged.hub, forged.principal, forged.expires, forged.connection_id
            )),
            tag
        );
        assert_eq!(verify(b"secret", &f, 0), Err(TokenError::BadSignature));
        assert_eq!(verify(b"secret", "garbage", 0), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", "a.b.c", 0), Err(TokenError::Malformed));
    }
}
