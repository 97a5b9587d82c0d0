//! Which web pages may use the hubs (`HERALD_ALLOWED_ORIGINS`): CORS for negotiate and the
//! transport endpoints, and the same list for WebSocket upgrades, which browsers send without
//! CORS. A request from a page on an origin not in the list gets a 403 that says why; requests
//! without an `Origin` (SDKs, servers) and same-origin pages are not affected.
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed to call the hubs from a browser.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// None: only same-origin pages and clients that send no `Origin`.
    #[default]
    None,
    /// `*`: any page (local development).
    Any,
    /// Exact origins (`scheme://host[:port]`), compared without case.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parses the comma-separated setting: `*`, or exact origins such as
    /// `https://app.example.com,http://localhost:3000`. An empty value allows none.
    pub fn parse(value: &str) -> Result<Self, String> {
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(Self::None);
        }
        if items.contains(&"*") {
            if items.len() > 1 {
                return Err("`*` allows every origin; list no other origin beside it".into());
            }
            return Ok(Self::Any);
        }
        let mut list = Vec::with_capacity(items.len());
        for item in items {
            list.push(parse_origin(item)?);
        }
        Ok(Self::List(list))
    }

    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

impl std::fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Any => f.write_str("*"),
            Self::List(l) => f.write_str(&l.join(",")),
        }
    }
}

fn parse_origin(item: &str) -> Result<String, String> {
    let shown: String = item.chars().take(100).collect();
    let (scheme, rest) = item
        .split_once("://")
        .ok_or_else(|| format!("`{shown}` is not an origin: write scheme://host[:port]"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("`{shown}`: an origin's scheme is http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{shown}` is not an origin: only scheme://host[:port], no path (no trailing /)"
        ));
    }
    Ok(item.to_ascii_lowercase())
}

/// True when the page's origin is the host the request was sent to (same-origin requests,
/// which browsers mark with `Origin` on POST and WebSocket too).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, a)| a);
    matches!((host, authority), (Some(h), Some(a)) if h.eq_ignore_ascii_case(a))
}

/// Refuses requests whose `Origin` is neither allowed nor this host. A preflight is left to
/// the CORS layer (outside this one), so that the browser sends the real request and the page
/// can read the refusal's reason instead of a bare "CORS error".
pub(crate) async fn guard(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if let Some(origin) = origin
        && request.method() != Method::OPTIONS
        && !allowed.allows(origin)
        && !same_origin(origin, request.headers())
    {
        herald_telemetry::metrics()
            .connections_rejected
            .with("origin")
            .inc();
        let shown: String = origin.chars().take(200).collect();
        let text = format!(
            "origin {shown} is not allowed to use this server: add it to HERALD_ALLOWED_ORIGINS\n"
        );
        return (StatusCode::FORBIDDEN, text).into_response();
    }
    next.run(request).await
}

/// CORS as the stock SignalR browser client needs it: the preflight answered, the headers it
/// sends allowed, the page's exact origin echoed with credentials (it sends `withCredentials`
/// by default; Herald reads no cookies, so this grants no ambient authority). Origins not
/// allowed never get past [`guard`], which runs inside this layer.
pub(crate) fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-signalr-user-agent"),
            HeaderName::from_static("x-requested-with"),
        ])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_setting_parses_into_exact_origins_or_any() {
        assert_eq!(AllowedOrigins::parse(""), Ok(AllowedOrigins::None));
        assert_eq!(AllowedOrigins::parse(" * "), Ok(AllowedOrigins::Any));
        let list = AllowedOrigins::parse("https://App.example.com, http://localhost:3000").unwrap();
        assert!(list.allows("https://app.example.com"));
        assert!(list.allows("http://localhost:3000"));
        assert!(!list.allows("http://localhost:3001"));
        assert!(!list.allows("https://app.example.com.evil.test"));
        assert!(AllowedOrigins::parse("*,https://a.test").is_err());
        assert!(AllowedOrigins::parse("https://a.test/").is_err());
        assert!(AllowedOrigins::parse("a.test").is_err());
        assert!(AllowedOrigins::parse("ftp://a.test").is_err());
        assert!(!AllowedOrigins::None.allows("http://x.test"));
    }

    #[test]
    fn same_origin_compares_the_host_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("herald.test:8080"));
        assert!(same_origin("http://herald.test:8080", &h));
        assert!(!same_origin("http://herald.test:8081", &h));
        assert!(!same_origin("null", &h));
    }
}
