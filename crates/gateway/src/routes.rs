//! HTTP side of the hubs: negotiate and the WebSocket upgrade. Everything that can be refused
//! (unknown hub 404, credential 401, connection token 401, cursor 400, backplane 503) is
//! refused here, before the upgrade, so clients see a plain HTTP status.
use crate::auth::{AuthError, Principal, authenticate, query_param};
use crate::cursor::Cursor;
use crate::hubs::{self, Hub};
use crate::node::{Gateway, NodeState};
use crate::session::{self, Setup};
use crate::token::{self, ConnectionToken};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_backplane::Mailbox;
use herald_telemetry::metrics;
use rand::RngCore;
use serde_json::json;
use std::sync::Arc;

/// The read buffer is allocated up front for every connection and clients send little (a ping
/// record is a 17-byte frame, invocations and cursors a few hundred bytes), so it is small:
/// idle connections dominate memory (1 KiB -> 256 B took ~770 B off each idle connection).
/// Larger messages are read in 256-byte chunks into a buffer grown for the frame.
const READ_BUFFER: usize = 256;
/// Outgoing bytes are gathered up to this much before a write; the buffer grows on demand.
const WRITE_BUFFER: usize = 4 * 1024;

impl Gateway {
    /// `POST /hubs/{hub}/negotiate` and `GET /hubs/{hub}` (WebSocket), state applied.
    pub fn router(&self) -> Router {
        router(self.inner.clone())
    }
}

fn router(inner: Arc<NodeState>) -> Router {
    Router::new()
        .route("/hubs/{hub}/negotiate", post(negotiate))
        .route("/hubs/{hub}", get(connect))
        .with_state(inner)
}

fn refuse(status: StatusCode, text: &str) -> Response {
    let reason = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "unknown_hub",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "other",
    };
    metrics().connections_rejected.with(reason).inc();
    let mut r = (status, format!("{text}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn new_connection_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    URL_SAFE_NO_PAD.encode(id)
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Checks what negotiate and connect have in common: hub, shutdown, credential, cursor.
async fn admit(
    gw: &NodeState,
    route: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(&'static Hub, Principal, Option<Cursor>), Response> {
    let hub = hubs::find(route).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "unknown hub"))?;
    if *gw.shutdown.borrow() {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let principal = authenticate(
        gw.store.as_ref(),
        gw.config.master_key.as_deref(),
        headers,
        query,
    )
    .await
    .map_err(|e| match e {
        AuthError::Unavailable(err) => {
            tracing::warn!(error = %err, "key lookup failed");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable")
        }
        other => refuse(StatusCode::UNAUTHORIZED, &other.to_string()),
    })?;
    if !hub.admits(&principal) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "this credential may not connect to this hub",
        ));
    }
    // A bad cursor is refused with 400 before anything starts: reconnecting with the same
    // cursor could never succeed.
    let cursor = match query.and_then(|q| query_param(q, "cursor")) {
        Some(c) if !c.trim().is_empty() => {
            Some(Cursor::decode(&c).map_err(|e| refuse(StatusCode::BAD_REQUEST, &e))?)
        }
        _ => None,
    };
    Ok((hub, principal, cursor))
}

async fn negotiate(
    State(gw): State<Arc<NodeState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (hub, principal, _) = match admit(&gw, &route, &headers, query.as_deref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let connection_id = new_connection_id();
    let ttl = i64::try_from(gw.config.connection_token_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let token = token::sign(
        &gw.config.token_secret,
        &ConnectionToken {
            hub: hub.name.to_owned(),
            principal: principal.token_id(),
            expires: now_unix().saturating_add(ttl),
            connection_id: connection_id.clone(),
        },
    );
    let version = query
        .as_deref()
        .and_then(|q| query_param(q, "negotiateVersion"))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let transports = json!([{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]);
    let body = if version >= 1 {
        json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": transports,
        })
    } else {
        // Version 0: the client sends `id=<connectionId>`, so the id is the token.
        json!({"connectionId": token, "availableTransports": transports})
    };
    Json(body).into_response()
}

async fn connect(
    State(gw): State<Arc<NodeState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (hub, principal, cursor) = match admit(&gw, &route, &headers, query.as_deref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let connection_id = match query.as_deref().and_then(|q| query_param(q, "id")) {
        // Negotiated: the token must be ours, current, for this hub and this caller.
        Some(id) => match token::verify(&gw.config.token_secret, &id, now_unix()) {
            Ok(t) if t.hub == hub.name && t.principal == principal.token_id() => t.connection_id,
            Ok(_) => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "connection token belongs to another hub or credential",
                );
            }
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
        },
        // skipNegotiation.
        None => new_connection_id(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // Subscribed before the upgrade completes, hence before the handshake response: an event
    // published after the client's start() resolves is delivered.
    // Each audience's newest position before subscribing: everything after it reaches this
    // connection (live, or by replay), and its cursors name every audience from the start.
    // Sized exactly: these live as long as the connection.
    let audiences = hub.audiences_for(&principal);
    let mut floors = Cursor::with_capacity(audiences.len());
    for &audience in &audiences {
        match gw.backplane.position(audience).await {
            Ok(p) => floors.set(audience, p),
            Err(e) => {
                tracing::warn!(error = %e, %audience, "backplane position read failed");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable");
            }
        }
    }
    let (mailbox, receiver) = Mailbox::new(gw.config.outbound_queue_bytes);
    let mut subscriptions = Vec::with_capacity(audiences.len());
    for audience in audiences {
        match gw.backplane.subscribe(audience, mailbox.clone()).await {
            Ok(s) => subscriptions.push(s),
            Err(e) => {
                tracing::warn!(error = %e, %audience, "backplane subscribe failed");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable");
            }
        }
    }
    drop(mailbox);
    let max = gw.config.max_message_bytes;
    // The transport's own limit sits well above ours, so a message a little over the limit is
    // read completely and answered with a SignalR Close; only far larger ones hit the transport
    // error (answered with a Close too, best effort).
    let hard_limit = max.saturating_mul(4).max(max.saturating_add(64 * 1024));
    let setup = Setup {
        hub,
        principal,
        connection_id,
        subscriptions,
        receiver,
        resume: cursor,
        floors,
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // The session gets a task of its own: axum's upgrade task keeps its own state (the
        // upgrade, the config, this closure) for as long as the callback's future runs, and
        // every idle connection would carry it. This way it ends right after the upgrade.
        .on_upgrade(move |socket| {
            tokio::spawn(session::run(socket, gw, setup));
            std::future::ready(())
        })
}
