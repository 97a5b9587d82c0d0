//! HTTP side of the hubs: negotiate and the WebSocket upgrade. Everything that can be refused
//! (unknown hub 404, credential 401, connection token 401, cursor 400, backplane 503) is
//! refused here, before the upgrade, so clients see a plain HTTP status.
use crate::auth::{AuthError, Principal, authenticate, presented_credential, query_param};
use crate::caps::{Caller, ClientAddress};
use crate::cursor::Cursor;
use crate::hubs::{self, Hub};
use crate::node::{Gateway, NodeState};
use crate::origins;
use crate::session::{self, Setup};
use crate::token::{self, ConnectionToken, new_connection_id};
use crate::transports;
use crate::wire::Wire;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_backplane::Mailbox;
use herald_telemetry::metrics;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The read buffer is allocated up front for every connection and clients send little (a ping
/// record is a 17-byte frame, invocations and cursors a few hundred bytes), so it is small:
/// idle connections dominate memory (1 KiB -> 256 B took ~770 B off each idle connection).
/// Larger messages are read in 256-byte chunks into a buffer grown for the frame.
const READ_BUFFER: usize = 256;
/// Outgoing bytes are gathered up to this much before a write; the buffer grows on demand.
const WRITE_BUFFER: usize = 4 * 1024;

impl Gateway {
    /// `POST /hubs/{hub}/negotiate` and `/hubs/{hub}` (WebSocket, Server-Sent Events, long
    /// polling), state applied, behind the allowed-origins check and CORS.
    pub fn router(&self) -> Router {
        router(self.inner.clone())
    }
}

fn router(inner: Arc<NodeState>) -> Router {
    let origins = Arc::new(inner.config.allowed_origins.clone());
    Router::new()
        .route("/hubs/{hub}/negotiate", post(negotiate))
        .route("/hubs/{hub}", get(connect).post(send).delete(disconnect))
        .with_state(inner)
        .layer(axum::middleware::from_fn_with_state(
            origins,
            origins::guard,
        ))
        .layer(origins::cors())
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

/// The client's address: what the server in front determined ([`ClientAddress`]), else the
/// peer from axum's `ConnectInfo`, else unknown (then only the per-key cap applies).
fn client_address(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ClientAddress>().map(|a| a.0).or_else(|| {
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    })
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
    // Requests of a connection that is already open (`?id=` with a non-WebSocket request)
    // are still served while the node drains; new connections are not.
    let existing = query.and_then(|q| query_param(q, "id")).is_some()
        && !headers.contains_key(header::UPGRADE);
    if *gw.shutdown.borrow() && !existing {
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
    // Server-Sent Events carry text only (the transport protocol says so).
    let transports = json!([
        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
        {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
        {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
    ]);
    let body = if version >= 1 {
        json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": transports,
        })
    } else {
        // Version 0: the client sends `id=<connectionId>`, so the id is the token.
        json!({"connectionId": token, "negotiateVersion": 0, "availableTransports": transports})
    };
    Json(body).into_response()
}

/// What `?id=` (a connection token from negotiate) names.
struct Named {
    connection_id: String,
    /// Not expired: it may still start a connection. An open Server-Sent Events or
    /// long-polling connection keeps using its token after that.
    fresh: bool,
}

/// Checks `?id=`: signed by us, for this hub and, when the request has a credential, for this
/// caller. The refusal is the response itself, as in [`admit`]; it is built once per refused
/// request.
#[allow(clippy::result_large_err)]
fn connection_of(
    gw: &NodeState,
    hub: &Hub,
    principal: Option<&Principal>,
    id: &str,
) -> Result<Named, Response> {
    // Expiry is the caller's to judge (see `Named::fresh`).
    match token::verify(&gw.config.token_secret, id, i64::MIN) {
        Ok(t) if t.hub == hub.name && principal.is_none_or(|p| t.principal == p.token_id()) => {
            Ok(Named {
                fresh: t.expires > now_unix(),
                connection_id: t.connection_id,
            })
        }
        Ok(_) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "connection token belongs to another hub or credential",
        )),
        Err(e) => Err(refuse(StatusCode::UNAUTHORIZED, &e.to_string())),
    }
}

fn expired() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        &token::TokenError::Expired.to_string(),
    )
}

/// Who makes a Server-Sent Events or long-polling request, and for which connection.
type TransportCaller = (&'static Hub, Option<Principal>, Option<Cursor>, Named);

/// The caller and connection of a Server-Sent Events or long-polling request. With a
/// credential, it is checked as for every request. Without one, the request may only continue
/// a connection that is already open, named by its signed token (some clients, such as Python's
/// signalrcore, send the credential only on the requests that start a connection): it can
/// never start one.
async fn transport_caller(
    gw: &NodeState,
    route: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<TransportCaller, Response> {
    let id = query.and_then(|q| query_param(q, "id")).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "Server-Sent Events and long polling need ?id=<connectionToken> from negotiate",
        )
    })?;
    if presented_credential(headers, query).is_none() {
        let hub = hubs::find(route).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "unknown hub"))?;
        let named = connection_of(gw, hub, None, &id)?;
        return Ok((hub, None, None, named));
    }
    let (hub, principal, cursor) = admit(gw, route, headers, query).await?;
    let named = connection_of(gw, hub, Some(&principal), &id)?;
    Ok((hub, Some(principal), cursor, named))
}

/// Serves an HTTP-transport request; `request` may start the connection when the caller
/// presented a credential and the token is fresh.
async fn serve_transport(
    gw: &Arc<NodeState>,
    caller: TransportCaller,
    address: Option<IpAddr>,
    request: transports::Request,
) -> Response {
    let (hub, principal, cursor, named) = caller;
    let Named {
        connection_id,
        fresh,
    } = named;
    let id = connection_id.clone();
    let start = move || async move {
        match principal {
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "credential required to start a connection",
            )),
            Some(_) if !fresh => Err(expired()),
            Some(p) => prepare(gw, hub, p, address, connection_id, cursor).await,
        }
    };
    transports::serve(gw, &id, request, start).await
}

/// `GET /hubs/{hub}`: a WebSocket upgrade, a Server-Sent Events stream (`Accept:
/// text/event-stream`) or a long poll, told apart as the SignalR transport protocol does.
async fn connect(
    State(gw): State<Arc<NodeState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let address = client_address(&extensions);
    drop(extensions);
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) if headers.contains_key(header::SEC_WEBSOCKET_KEY) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "this looks like a WebSocket request without `Upgrade: websocket` and \
                 `Connection: upgrade` (a proxy in between may remove them); the server also \
                 offers ServerSentEvents and LongPolling",
            );
        }
        Err(_)
            if query
                .as_deref()
                .and_then(|q| query_param(q, "id"))
                .is_none() =>
        {
            return refuse(
                StatusCode::BAD_REQUEST,
                "not a WebSocket request: Server-Sent Events and long polling need a \
                 negotiated connection (POST /hubs/{hub}/negotiate, then ?id=<connectionToken>)",
            );
        }
        Err(_) => {
            let wants_events = headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"));
            let request = if wants_events {
                transports::Request::EventStream
            } else {
                transports::Request::Poll
            };
            return match transport_caller(&gw, &route, &headers, query.as_deref()).await {
                Ok(caller) => serve_transport(&gw, caller, address, request).await,
                Err(r) => r,
            };
        }
    };
    let (hub, principal, cursor) = match admit(&gw, &route, &headers, query.as_deref()).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let connection_id = match query.as_deref().and_then(|q| query_param(q, "id")) {
        Some(id) => match connection_of(&gw, hub, Some(&principal), &id) {
            Ok(Named {
                connection_id,
                fresh: true,
            }) => connection_id,
            Ok(_) => return expired(),
            Err(r) => return r,
        },
        // skipNegotiation.
        None => new_connection_id(),
    };
    let setup = match prepare(&gw, hub, principal, address, connection_id, cursor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    metrics().transports_opened.with("websockets").inc();
    let max = gw.config.max_message_bytes;
    // The transport's own limit sits well above ours, so a message a little over the limit is
    // read completely and answered with a SignalR Close; only far larger ones hit the transport
    // error (answered with a Close too, best effort).
    let hard_limit = max.saturating_mul(4).max(max.saturating_add(64 * 1024));
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // The session gets a task of its own: axum's upgrade task keeps its own state (the
        // upgrade, the config, this closure) for as long as the callback's future runs, and
        // every idle connection would carry it. This way it ends right after the upgrade.
        .on_upgrade(move |socket| {
            tokio::spawn(session::run(Wire::WebSocket(socket), gw, setup));
            std::future::ready(())
        })
}

/// `POST /hubs/{hub}?id=`: client messages of a Server-Sent Events or long-polling connection.
async fn send(
    State(gw): State<Arc<NodeState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    body: axum::body::Body,
) -> Response {
    let address = client_address(&extensions);
    drop(extensions);
    // Read only after the caller and the token checked out, and no more than one message.
    let caller = match transport_caller(&gw, &route, &headers, query.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let max = gw.config.max_message_bytes;
    let body = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a POST carries at most {max} bytes"),
            );
        }
    };
    // A send may start a long-polling connection (see `transports::serve`).
    serve_transport(&gw, caller, address, transports::Request::Send(body)).await
}

/// `DELETE /hubs/{hub}?id=`: the client ends its long-polling connection.
async fn disconnect(
    State(gw): State<Arc<NodeState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match transport_caller(&gw, &route, &headers, query.as_deref()).await {
        // A DELETE never starts a connection: no address needed for the caps.
        Ok(caller) => serve_transport(&gw, caller, None, transports::Request::Delete).await,
        Err(r) => r,
    }
}

/// What every transport's session needs before it starts: a place under the per-key and
/// per-address caps (refused with 429 otherwise), each audience's newest position and a
/// subscription to it. Subscribed before the session answers the handshake, so an event
/// published after the client's start() resolves is delivered; everything after the floors
/// reaches the connection (live, or by replay), and its cursors name every audience from the
/// start.
async fn prepare(
    gw: &NodeState,
    hub: &'static Hub,
    principal: Principal,
    address: Option<IpAddr>,
    connection_id: String,
    cursor: Option<Cursor>,
) -> Result<Setup, Response> {
    if *gw.shutdown.borrow() {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let caller = match &principal {
        Principal::Master => Caller::Master,
        Principal::Key(k) => Caller::Key(k.id),
    };
    // Taken first (nothing is subscribed yet) and held by the setup, then by the session: an
    // upgrade that never completes or a setup that fails below gives it back when dropped.
    let slot = match gw.caps.take(caller, address) {
        Ok(s) => s,
        Err(over) => {
            metrics()
                .connections_rejected
                .with(over.metric_reason())
                .inc();
            let mut r =
                (StatusCode::TOO_MANY_REQUESTS, format!("{}\n", over.text())).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return Err(r);
        }
    };
    // Sized exactly: these live as long as the connection.
    let audiences = hub.audiences_for(&principal);
    let mut floors = Cursor::with_capacity(audiences.len());
    for &audience in &audiences {
        match gw.backplane.position(audience).await {
            Ok(p) => floors.set(audience, p),
            Err(e) => {
                tracing::warn!(error = %e, %audience, "backplane position read failed");
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backplane unavailable",
                ));
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
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backplane unavailable",
                ));
            }
        }
    }
    Ok(Setup {
        hub,
        principal,
        slot,
        connection_id,
        subscriptions,
        receiver,
        resume: cursor,
        floors,
    })
}
