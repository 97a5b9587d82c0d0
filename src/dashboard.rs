//! The built-in dashboard (docs/clients.md): `GET /` and its two assets. They are built from
//! clients/js (the SDK and clients/js/dashboard) by `npm run build:dashboard`, committed, and
//! compiled into the binary here, so a node serves the page with no npm step and no files.
//! The bundle's first line names a SHA-256 of its sources; `tests/dashboard_bundle.rs`
//! recomputes it and fails when the committed bundle is stale.
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

pub const INDEX_HTML: &str = include_str!("../clients/js/dashboard/index.html");
pub const SCRIPT: &str = include_str!("../clients/js/dashboard/dist/dashboard.js");
pub const STYLE: &str = include_str!("../clients/js/dashboard/dist/dashboard.css");

/// The page talks only to its own origin; no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/`, `/dashboard/dashboard.js`, `/dashboard/dashboard.css`.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary: revalidate, never serve a stale bundle.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}
