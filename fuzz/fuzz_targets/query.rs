//! Query strings and credentials (crates/gateway/src/auth.rs): the `?access_token=`, `?api_key=`,
//! `?id=` (connection token), `?cursor=` and `?negotiateVersion=` of negotiate and connect, and
//! the `Authorization` / `X-API-Key` headers, parsed as routes.rs does. The input is the query
//! string; it is also used as a value, percent-encoded, to check the decoding both ways.
#![no_main]
use herald_gateway::auth::{presented_credential, query_param};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "access_token",
    "api_key",
    "id",
    "cursor",
    "negotiateVersion",
];

/// Percent-encodes every byte but ASCII letters and digits.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    for name in NAMES {
        if let Some(v) = query_param(input, name) {
            // Whatever was decoded, encoded again and read back, is the same value.
            let again = format!("{}={}", encode(name), encode(&v));
            assert_eq!(query_param(&again, name).as_deref(), Some(v.as_str()));
        }
    }
    let _ = query_param(input, "negotiateVersion").and_then(|v| v.parse::<u32>().ok());
    let _ = presented_credential(&HeaderMap::new(), Some(input));

    // The input as a value: any string survives percent-encoding and `+`-free decoding.
    let q = format!("x=1&{}={}&id=2", "access_token", encode(input));
    assert_eq!(query_param(&q, "access_token").as_deref(), Some(input));
    // A query credential wins over the headers; an empty one counts as absent.
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("header-key"));
    let expected = if input.is_empty() {
        "header-key"
    } else {
        input
    };
    assert_eq!(
        presented_credential(&headers, Some(&q)).as_deref(),
        Some(expected)
    );
    // The input as a header: a bearer token is the trimmed rest after the scheme.
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {input}")) {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        if let Some(token) = presented_credential(&h, None) {
            assert_eq!(token, input.trim());
        }
    }
});
