//! Herald's own HTTP endpoints: health, readiness, metrics and the admin API. The hubs come
//! from the gateway crate and are merged in by `startup`.
use crate::keys::KeySpec;
use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_backplane::SharedBackplane;
use herald_domain::invalid::bounded;
use herald_domain::{KeyHash, RawKey};
use herald_gateway::auth::{constant_time_eq, query_param};
use herald_ingest::envelope::MessageMeta;
use herald_ingest::{Failure, Pipeline};
use herald_store::{SharedStore, StoreError};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    pub store: Option<SharedStore>,
    pub backplane: Option<SharedBackplane>,
    /// Set by the AMQP consumer while it is consuming.
    pub consumer: Option<Arc<AtomicBool>>,
}

#[derive(Clone)]
pub struct AdminApi {
    pub master_key: Option<String>,
    pub pipeline: Pipeline,
    pub store: SharedStore,
    /// Time to receive a whole body (`HERALD_HTTP_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// Largest `POST /v1/events` body (`HERALD_HTTP_MAX_EVENT_BODY`).
    pub max_event_body: usize,
}

/// Largest `POST /v1/keys` body: a key description is a few hundred bytes.
pub const MAX_KEY_BODY: usize = 16 * 1024;
/// The most of an error message a caller is sent: messages may quote its input.
const MAX_ERROR: usize = 512;
/// Media types `POST /v1/events` takes (parameters such as `charset` allowed); none at all is
/// taken as JSON.
const EVENT_TYPES: &[&str] = &[
    "application/json",
    "application/cloudevents+json",
    "application/vnd.masstransit+json",
];

#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// `/healthz` alone: what the client port serves besides the hubs when an admin listener is set.
pub fn client_health_routes() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn internal_routes(readiness: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { readiness, metrics })
}

/// `POST /v1/events`, `POST /v1/keys` (master key).
pub fn admin_routes(api: AdminApi) -> Router {
    Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/keys", post(post_key))
        .with_state(Arc::new(api))
}

async fn readyz(State(s): State<HealthState>) -> Response {
    let limit = Duration::from_secs(2);
    let mut failing = Vec::new();
    if let Some(store) = &s.readiness.store
        && !matches!(tokio::time::timeout(limit, store.ping()).await, Ok(Ok(())))
    {
        failing.push("database");
    }
    if let Some(bp) = &s.readiness.backplane
        && !matches!(tokio::time::timeout(limit, bp.ping()).await, Ok(Ok(())))
    {
        failing.push("redis");
    }
    if let Some(consumer) = &s.readiness.consumer
        && !consumer.load(Ordering::Relaxed)
    {
        failing.push("amqp");
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": failing})),
        )
            .into_response()
    }
}

async fn metrics_text(State(s): State<HealthState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Why an admin API request was refused. Its response is the status and `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    TooLarge(String),
    #[error("request body not received within {0:?} (HERALD_HTTP_BODY_TIMEOUT)")]
    BodyTimeout(Duration),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Event(#[from] Failure),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) | Self::Event(Failure::Rejected(_)) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // Over HTTP the caller holds a deferred event: it can send it again after the one
            // it waits for.
            Self::Conflict(_)
            | Self::Store(StoreError::Conflict(_))
            | Self::Event(Failure::Deferred(_)) => StatusCode::CONFLICT,
            Self::Store(_) | Self::Event(Failure::Transient(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &self {
            // The caller sees the reason, not the "rejected:" prefix of the consumer's logs.
            Self::Event(Failure::Rejected(r) | Failure::Deferred(r)) => r.to_string(),
            Self::Event(Failure::Transient(r)) => r.to_string(),
            Self::Store(StoreError::Conflict(m)) => m.clone(),
            other => other.to_string(),
        };
        let reason = match &self {
            Self::TooLarge(_) => Some("body_too_large"),
            Self::BodyTimeout(_) => Some("body_timeout"),
            Self::UnsupportedMediaType(_) => Some("content_type"),
            _ => None,
        };
        if let Some(reason) = reason {
            herald_telemetry::metrics().http_refused.with(reason).inc();
        }
        let mut r = (status, Json(json!({"error": bounded(&message, MAX_ERROR)}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body is not read: the connection cannot carry another request.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

/// The master key, from `Authorization: Bearer` or `X-API-Key` only: a query string ends up in
/// access logs (docs/decisions.md). Checked before any of the body is read.
fn authorize(api: &AdminApi, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let Some(master) = &api.master_key else {
        return Err(ApiError::Forbidden(
            "admin API disabled: set HERALD_MASTER_KEY",
        ));
    };
    let in_query = query.is_some_and(|q| {
        ["access_token", "api_key"]
            .iter()
            .any(|p| query_param(q, p).is_some_and(|v| !v.is_empty()))
    });
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let presented = bearer
        .or_else(|| headers.get("x-api-key")?.to_str().ok().map(str::trim))
        .filter(|c| !c.is_empty());
    match presented {
        Some(c) if constant_time_eq(c.as_bytes(), master.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("invalid master key")),
        None if in_query => Err(ApiError::Unauthorized(
            "the admin API takes the master key in a header only (Authorization: Bearer or X-API-Key), not in the query string",
        )),
        None => Err(ApiError::Unauthorized("master key required")),
    }
}

/// Refuses a declared media type other than `accepted` (none declared is taken as JSON).
fn check_content_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = v.to_str().unwrap_or("");
    let media = text.split(';').next().unwrap_or("").trim();
    if accepted.iter().any(|a| a.eq_ignore_ascii_case(media)) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {:?}: expected {}",
            herald_domain::invalid::prefix(text),
            accepted.join(", ")
        )))
    }
}

/// The body, at most `limit` bytes, within the body timeout: a declared length over the limit
/// is refused before anything is read.
async fn read_body(
    api: &AdminApi,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("request body larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::BodyTimeout(api.body_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        // Over the limit (chunked) or the client went away mid-body.
        Ok(Err(_)) => Err(too_large()),
    }
}

async fn post_event(State(api): State<Arc<AdminApi>>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    authorize(&api, &headers, parts.uri.query())?;
    check_content_type(&headers, EVENT_TYPES)?;
    let body = read_body(&api, &headers, body, api.max_event_body).await?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let meta = MessageMeta {
        routing_key: header_text("ce-type").unwrap_or_default(),
        content_type: header_text("content-type"),
        message_type: None,
        traceparent: header_text("traceparent"),
    };
    let p = api.pipeline.process(&body, &meta).await?;
    // A repeated id is not an error (a client retrying after a timeout must not be told its
    // event failed) but is said: 200 instead of 202, `duplicate`, and why (docs/protocol.md).
    if p.duplicate {
        herald_telemetry::metrics().duplicates.with("http").inc();
        tracing::info!(event_id = %p.event_id, event_type = p.event_type, "duplicate event over HTTP: its id was already published; nothing sent again");
        return Ok((
            StatusCode::OK,
            Json(json!({
                "eventId": p.event_id.as_str(),
                "duplicate": true,
                "detail": "an event with this id was already published; it was not sent again",
            })),
        )
            .into_response());
    }
    tracing::debug!(event_id = %p.event_id, event_type = p.event_type, key_id = p.key_id.map(|k| k.get()), published = p.published, alerts = p.alerts, "event accepted over HTTP");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"eventId": p.event_id.as_str(), "duplicate": false})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewKey {
    id: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    budget: Option<serde_json::Value>,
    #[serde(default)]
    budget_period: Option<String>,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    alert_thresholds: Option<Vec<u32>>,
    #[serde(default)]
    expires_at: Option<String>,
    /// Spike alerts for this key (off by default).
    #[serde(default)]
    spike_alerts: bool,
    /// Import a key known only by its hash instead of generating one.
    #[serde(default)]
    key_hash: Option<String>,
}

async fn post_key(State(api): State<Arc<AdminApi>>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    authorize(&api, &headers, parts.uri.query())?;
    check_content_type(&headers, &["application/json"])?;
    let body = read_body(&api, &headers, body, MAX_KEY_BODY).await?;
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(e.to_string());
    let req: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid key request: {e}")))?;
    let id = match herald_domain::KeyRef::parse("id", &req.id) {
        Ok(herald_domain::KeyRef::Id(id)) => id,
        _ => return Err(ApiError::BadRequest("id must be a positive integer".into())),
    };
    let budget = req
        .budget
        .as_ref()
        .map(|b| herald_domain::money::Budget::from_json("budget", b))
        .transpose()
        .map_err(|e| bad(&e))?;
    let (raw, hash) = match &req.key_hash {
        Some(h) => (None, KeyHash::parse(h).map_err(|e| bad(&e))?),
        None => {
            let raw = RawKey::generate();
            let hash = raw.hash();
            (Some(raw), hash)
        }
    };
    let spec = KeySpec {
        id,
        name: req.name.as_deref().unwrap_or(""),
        hash,
        budget,
        period: req.budget_period.as_deref(),
        admin: req.is_admin,
        thresholds: req.alert_thresholds,
        expires_at: req.expires_at.as_deref(),
        spike_alerts: req.spike_alerts,
    };
    let key = spec.build().map_err(ApiError::BadRequest)?;
    if api.store.key_by_id(id).await?.is_some() {
        return Err(ApiError::Conflict(format!("key {id} exists")));
    }
    api.store.put_key(&key).await?;
    tracing::info!(key_id = %id, "virtual key created");
    let mut body = json!({"id": id.get(), "name": key.name, "keyHash": key.key_hash.as_str()});
    if let Some(raw) = raw {
        body["key"] = json!(raw.expose());
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
