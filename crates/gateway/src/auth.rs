//! Who is connecting (docs/protocol.md, "Authentication"). The credential is taken, in this order, from the query
//! parameter `access_token`, the query parameter `api_key`, `Authorization: Bearer`, and the
//! `X-API-Key` header. It is either the master key (compared in constant time) or a virtual key,
//! looked up by its SHA-256 hash. Raw credentials are never logged.
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use herald_domain::{KeyHash, RawKey, VirtualKey};
use herald_store::{Store, StoreError};

/// The credential a request presents, by the documented order; `None` when there is none.
/// Empty values count as absent.
pub fn presented_credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_query = |name| {
        query
            .and_then(|q| query_param(q, name))
            .filter(|v| !v.is_empty())
    };
    from_query("access_token")
        .or_else(|| from_query("api_key"))
        .or_else(|| {
            let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
            let (scheme, token) = v.split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        })
        .or_else(|| {
            let v = headers.get("x-api-key")?.to_str().ok()?.trim();
            (!v.is_empty()).then(|| v.to_owned())
        })
}

/// Compares two secrets without an early exit on the first differing byte (the length is not
/// secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first value of `name` in a query string, form-url-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name)
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// `HERALD_MASTER_KEY`.
    Master,
    Key(Box<VirtualKey>),
}

impl Principal {
    /// What a connection token records about the caller (never the raw key).
    pub fn token_id(&self) -> String {
        match self {
            Principal::Master => "master".to_owned(),
            Principal::Key(k) => k.key_hash.as_str().to_owned(),
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Master => true,
            Principal::Key(k) => k.is_admin,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credential required")]
    Missing,
    #[error("invalid credential")]
    Invalid,
    #[error("key disabled or expired")]
    Unusable,
    #[error("key store unavailable")]
    Unavailable(#[from] StoreError),
}

/// Resolves the credential presented by a request.
pub async fn authenticate(
    store: &dyn Store,
    master_key: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Principal, AuthError> {
    let cred = presented_credential(headers, query).ok_or(AuthError::Missing)?;
    if let Some(master) = master_key
        && !master.is_empty()
        && constant_time_eq(cred.as_bytes(), master.as_bytes())
    {
        return Ok(Principal::Master);
    }
    let raw = RawKey::parse(&cred).map_err(|_| AuthError::Invalid)?;
    let hash: KeyHash = raw.hash();
    let key = store.key_by_hash(&hash).await?.ok_or(AuthError::Invalid)?;
    if !key.is_usable(chrono::Utc::now()) {
        return Err(AuthError::Unusable);
    }
    Ok(Principal::Key(Box::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credential_order_is_query_token_query_key_bearer_header() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("hdr"));
        assert_eq!(presented_credential(&h, None).as_deref(), Some("hdr"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer bear"));
        assert_eq!(presented_credential(&h, None).as_deref(), Some("bear"));
        assert_eq!(
            presented_credential(&h, Some("api_key=qk&x=1")).as_deref(),
            Some("qk")
        );
        assert_eq!(
            presented_credential(&h, Some("api_key=qk&access_token=a%2Bb%20c")).as_deref(),
            Some("a+b c")
        );
        assert_eq!(
            presented_credential(&h, Some("access_token=&api_key=k")).as_deref(),
            Some("k")
        );
        assert_eq!(presented_credential(&HeaderMap::new(), Some("x=1")), None);
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_credential(&basic, None), None);
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn query_param_decodes_and_survives_bad_escapes() {
        assert_eq!(query_param("a=1&b=%41", "b").as_deref(), Some("A"));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("a", "a").as_deref(), Some(""));
    }
}
