//! One task per connection: handshake, then a single loop over the socket, the mailbox, a
//! timer (keep-alive ping, client timeout, key expiry) and shutdown. Replays for resume run
//! inline, before the live events queued meanwhile, which are deduplicated by position.
use crate::Inner;
use crate::auth::Principal;
use crate::cursor::Cursor;
use crate::hubs::{Hub, HubMethod};
use crate::protocol::{self, ClientMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_backplane::{Delivery, MailboxReceiver, Position, Received, Subscription};
use herald_domain::{Audience, KeyHash, KeyId};
use herald_telemetry::metrics;
use herald_telemetry::metrics::{Counter, Gauge};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Records are batched into one WebSocket frame up to about this size.
const FRAME_TARGET: usize = 16 * 1024;
/// How long closing may take (sending the Close, waiting for the client's close reply).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the upgrade handler established for a connection.
pub(crate) struct Setup {
    pub hub: &'static Hub,
    pub principal: Principal,
    pub connection_id: String,
    pub subscriptions: Vec<Subscription>,
    pub receiver: MailboxReceiver,
    /// `?cursor=` of the connect request.
    pub resume: Option<Cursor>,
    /// Each audience's newest position, read before subscribing: this connection receives
    /// everything after it live (or by replay).
    pub floors: Cursor,
}

/// A future on the heap. Every idle connection's task holds the largest state of its call
/// tree inline, so rare steps (handshake, resume, closing, key re-check, task lookup) are
/// boxed at their call: they are allocated only while they run.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The session is over (socket gone or closed by us).
struct Stop;
type Step = Result<(), Stop>;

enum ReplayError {
    Stop,
    Unavailable(String),
}

impl From<Stop> for ReplayError {
    fn from(_: Stop) -> Self {
        ReplayError::Stop
    }
}

struct Session {
    ws: WebSocket,
    gw: Arc<Inner>,
    hub: &'static Hub,
    connection_id: String,
    /// Last position delivered (or skipped as already seen) per audience. Starts at the floors,
    /// so every cursor handed out names every audience of the connection.
    delivered: Cursor,
    /// Per audience, the position after which this connection has had everything up to
    /// `delivered`: its floor at connect, lowered when a Resume replays older events.
    floors: Cursor,
    receiver: MailboxReceiver,
    /// The audiences this connection listens to (one subscription each); nothing else is ever
    /// delivered.
    subscriptions: Vec<Subscription>,
    /// An incomplete record carried over to the next frame.
    inbuf: Vec<u8>,
    last_received: Instant,
    last_sent: Instant,
    key_expires: Option<Instant>,
    /// The caller's key, re-checked in the store when its own stream carries a key change.
    own_key: Option<(KeyId, KeyHash)>,
    /// Master key or admin key: may subscribe to any task.
    is_admin: bool,
    /// What the client narrowed delivery to; boxed, and only once it named something (most
    /// connections never do).
    filters: Option<Box<Filters>>,
    /// `?cursor=` of the connect request, until the resume at the start has run.
    resume: Option<Box<Cursor>>,
    recheck_key: bool,
    /// Set when shutdown began: the moment this connection is closed.
    drain_at: Option<Instant>,
    /// `herald_events_delivered_total` of this hub, looked up once.
    delivered_total: Arc<Counter>,
}

#[derive(Default)]
struct Filters {
    /// Tasks named by `SubscribeToTask`; on a Conduit task hub, once any is named, only
    /// these tasks' events are delivered.
    tasks: std::collections::HashSet<String>,
    /// Admin hub: keys named by `SubscribeToVirtualKey`; once any is named, other keys'
    /// events are skipped (global ones still pass).
    admin_keys: std::collections::HashSet<KeyId>,
}

/// Counts an open connection in `herald_connections` from handshake to close.
struct Live(Arc<Gauge>);

impl Live {
    fn open(hub: &str) -> Self {
        let m = metrics();
        m.connections_opened.with(hub).inc();
        let g = m.connections.with(hub);
        g.inc();
        Self(g)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Events on a key's stream after which the connection re-checks that its key is still usable.
const KEY_CHANGES: [&str; 2] = ["VirtualKeyUpdated", "VirtualKeyDeleted"];

fn expiry_instant(expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Option<Instant> {
    expires_at.map(|t| {
        let left = (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
        later(Instant::now(), left)
    })
}

fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
}

/// A uniformly random point in `[0, window)`: spreads reconnects over the drain window.
fn drain_delay(window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::random_range(0..millis))
}

/// Resolves once shutdown is requested (never if the gateway is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts the connection in `Gateway::connections` (from here until the session is dropped).
impl Drop for Session {
    fn drop(&mut self) {
        self.gw.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's future. Not an `async fn`: the session is built here, so the future holds
/// it once instead of also keeping the arguments it was built from.
pub(crate) fn run(ws: WebSocket, gw: Arc<Inner>, setup: Setup) -> impl Future<Output = ()> + Send {
    gw.connections.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let (key_expires, own_key) = match &setup.principal {
        Principal::Key(k) => (
            expiry_instant(k.expires_at),
            Some((k.id, k.key_hash.clone())),
        ),
        Principal::Master => (None, None),
    };
    let mut s = Session {
        ws,
        hub: setup.hub,
        connection_id: setup.connection_id,
        delivered: setup.floors.clone(),
        floors: setup.floors,
        receiver: setup.receiver,
        subscriptions: setup.subscriptions,
        inbuf: Vec::new(),
        last_received: now,
        last_sent: now,
        key_expires,
        own_key,
        is_admin: setup.principal.is_admin(),
        filters: None,
        resume: setup.resume.map(Box::new),
        recheck_key: false,
        drain_at: None,
        delivered_total: metrics().delivered.with(setup.hub.name),
        gw,
    };
    async move {
        // Who connected, by key id only: the raw key never reaches a log line.
        let key_id = s.own_key.as_ref().map(|(id, _)| id.get());
        tracing::debug!(connection = %s.connection_id, hub = s.hub.name, key_id, "connected");
        let _ = s.serve().await;
        let key_id = s.own_key.as_ref().map(|(id, _)| id.get());
        tracing::debug!(connection = %s.connection_id, hub = s.hub.name, key_id, "disconnected");
    }
}

impl Session {
    async fn serve(&mut self) -> Step {
        // Boxed: the start is large and runs once; the loop is what an idle connection holds.
        let _live = Box::pin(self.start()).await?;
        self.main_loop().await
    }

    /// Handshake, the resume of `?cursor=`, and the records that came with the handshake.
    async fn start(&mut self) -> Result<Live, Stop> {
        self.handshake().await?;
        let live = Live::open(self.hub.name);
        if let Some(cursor) = self.resume.take() {
            // Nothing was delivered yet: start each resumed audience at the cursor, so the
            // replay runs in stream order with a cursor that moves along with it.
            for a in self.subscriptions.iter().map(Subscription::audience) {
                if let Some(requested) = cursor.get(a)
                    && self.floors.get(a).is_none_or(|f| requested < f)
                {
                    self.delivered.set(a, requested);
                    self.floors.set(a, requested);
                }
            }
            match self.replay(&cursor).await {
                Ok(_) => {}
                Err(ReplayError::Stop) => return Err(Stop),
                Err(ReplayError::Unavailable(e)) => {
                    tracing::warn!(connection = %self.connection_id, error = %e, "resume failed");
                    let _ = self
                        .close(Some("History unavailable; reconnect to resume."), true)
                        .await;
                    return Err(Stop);
                }
            }
        }
        // Messages the client sent together with its handshake.
        let carried = std::mem::take(&mut self.inbuf);
        self.on_data(&carried).await?;
        Ok(live)
    }

    async fn handshake(&mut self) -> Step {
        let deadline = later(Instant::now(), self.gw.config.handshake_timeout);
        // Sees a shutdown that began before it was created too (`stopping` checks the value).
        let mut shutdown = self.gw.shutdown.subscribe();
        loop {
            if let Some((record, rest)) = protocol::take_record(&self.inbuf) {
                let result = protocol::parse_handshake(record);
                self.inbuf = rest.to_vec();
                return match result {
                    Ok(()) => self.send(protocol::HANDSHAKE_OK.to_owned()).await,
                    Err(e) => self.refuse_handshake(&e).await,
                };
            }
            if self.inbuf.len() > self.gw.config.max_message_bytes {
                return self
                    .refuse_handshake("Handshake request is too large.")
                    .await;
            }
            let msg = tokio::select! {
                () = stopping(&mut shutdown) => {
                    self.close_socket().await;
                    return Err(Stop);
                }
                () = tokio::time::sleep_until(deadline) => {
                    let secs = self.gw.config.handshake_timeout.as_secs_f64();
                    return self
                        .refuse_handshake(&format!("Handshake was not received within {secs} seconds."))
                        .await;
                }
                m = self.ws.recv() => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => self.inbuf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.inbuf.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Stop),
            }
        }
    }

    async fn refuse_handshake(&mut self, error: &str) -> Step {
        tracing::debug!(connection = %self.connection_id, error, "handshake refused");
        let _ =
            tokio::time::timeout(CLOSE_GRACE, self.send(protocol::handshake_error(error))).await;
        self.close_socket().await;
        Err(Stop)
    }

    fn next_deadline(&self) -> Instant {
        let c = &self.gw.config;
        let ping = later(self.last_sent, c.keepalive_interval);
        let timeout = later(self.last_received, c.client_timeout);
        let t = ping.min(timeout);
        let t = self.drain_at.map_or(t, |d| t.min(d));
        self.key_expires.map_or(t, |k| t.min(k))
    }

    async fn main_loop(&mut self) -> Step {
        // Shutdown is waited for on the node's `Notify` (a 64-byte future) rather than a watch
        // receiver per connection (16 bytes in the session and a 160-byte future in the loop).
        let gw = self.gw.clone();
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);
        loop {
            let deadline = self.next_deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // Created before the flag is read: a shutdown after this point wakes it, and one
            // before it is in the flag.
            let drain = gw.drain.notified();
            if self.drain_at.is_none() && *gw.shutdown.borrow() {
                self.begin_drain().await?;
                continue;
            }
            // Biased: shutdown first, then what the client sent (so a client's message that is
            // already here counts before the timeout is judged), then events.
            tokio::select! {
                biased;
                () = drain, if self.drain_at.is_none() => self.begin_drain().await?,
                // `StreamExt::next` (and `SinkExt::send` in `send`) rather than axum's `recv`
                // and `send`: smaller futures, and this loop's is held by every idle connection.
                // Boxed: clients send a ping every 15 s and little else, and handling a frame
                // (records, hub methods) is larger than the rest of the loop.
                msg = self.ws.next() => Box::pin(self.on_frame(msg)).await?,
                r = self.receiver.recv() => self.on_mailbox(r).await?,
                () = &mut timer => self.on_timer().await?,
            }
        }
    }

    /// Shutdown began: keep delivering until this connection's turn in the drain window.
    async fn begin_drain(&mut self) -> Step {
        let delay = drain_delay(self.gw.config.drain_window);
        if delay.is_zero() {
            return self.close(Some("Server is shutting down."), true).await;
        }
        self.drain_at = Some(later(Instant::now(), delay));
        Ok(())
    }

    async fn on_timer(&mut self) -> Step {
        let now = Instant::now();
        if self.drain_at.is_some_and(|d| d <= now) {
            return self.close(Some("Server is shutting down."), true).await;
        }
        if self.key_expires.is_some_and(|k| k <= now) {
            return self.close(Some("The key expired."), false).await;
        }
        if now >= later(self.last_received, self.gw.config.client_timeout) {
            return self
                .close(
                    Some("Server timeout elapsed without receiving a message from the client."),
                    true,
                )
                .await;
        }
        if now >= later(self.last_sent, self.gw.config.keepalive_interval) {
            self.send(protocol::PING.to_owned()).await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
        match msg {
            None => Err(Stop),
            Some(Err(e)) => {
                // E.g. a message beyond the transport's hard limit or a protocol violation.
                tracing::debug!(connection = %self.connection_id, error = %e, "websocket error");
                self.close(Some(&format!("Connection error: {e}")), false)
                    .await
            }
            Some(Ok(Message::Text(t))) => {
                self.last_received = Instant::now();
                self.on_data(t.as_bytes()).await
            }
            Some(Ok(Message::Binary(b))) => {
                self.last_received = Instant::now();
                self.on_data(&b).await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => {
                // Lets the transport flush its close reply.
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, self.ws.recv())).await;
                Err(Stop)
            }
        }
    }

    /// Handles the records in `data` (plus any incomplete record carried over).
    async fn on_data(&mut self, data: &[u8]) -> Step {
        let max = self.gw.config.max_message_bytes;
        if data.len() > max || self.inbuf.len() + data.len() > max {
            let error = format!("Message exceeds the maximum size of {max} bytes.");
            return self.close(Some(&error), false).await;
        }
        let carried;
        let mut rest = if self.inbuf.is_empty() {
            data
        } else {
            self.inbuf.extend_from_slice(data);
            carried = std::mem::take(&mut self.inbuf);
            &carried[..]
        };
        while let Some((record, tail)) = protocol::take_record(rest) {
            rest = tail;
            if !record.iter().all(u8::is_ascii_whitespace) {
                // Boxed: clients send little (pings, a few invocations), and a record's handling
                // (parsing, a hub method) is larger than the rest of the idle loop.
                Box::pin(self.on_record(record)).await?;
            }
        }
        if !rest.is_empty() {
            self.inbuf = rest.to_vec();
        }
        Ok(())
    }

    async fn on_record(&mut self, record: &[u8]) -> Step {
        match protocol::parse_message(record) {
            Err(e) => self.close(Some(&e), false).await,
            Ok(ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
            }) => self.on_invocation(invocation_id, &target, arguments).await,
            Ok(ClientMessage::StreamInvocation {
                invocation_id,
                target,
            }) => match invocation_id {
                Some(id) => {
                    let error = format!("Streaming is not supported (method '{target}').");
                    self.send(protocol::completion_error(&id, &error)).await
                }
                None => Ok(()),
            },
            Ok(ClientMessage::Ignored | ClientMessage::Ping) => Ok(()),
            Ok(ClientMessage::Close { .. }) => {
                // The client closes the socket itself; wait briefly for that.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.recv()).await;
                Err(Stop)
            }
        }
    }

    async fn on_invocation(
        &mut self,
        invocation_id: Option<String>,
        target: &str,
        arguments: Vec<Value>,
    ) -> Step {
        let outcome: Result<String, String> = match self.hub.method(target) {
            None => Err(format!("Unknown hub method '{target}'")),
            Some(HubMethod::Resume) => match arguments.as_slice() {
                [Value::String(c)] => match Cursor::decode(c) {
                    Ok(cursor) => match self.replay(&cursor).await {
                        Ok(n) => Ok(format!("{{\"replayed\":{n}}}")),
                        Err(ReplayError::Stop) => return Err(Stop),
                        Err(ReplayError::Unavailable(e)) => {
                            tracing::warn!(connection = %self.connection_id, error = %e, "resume failed");
                            Err("History unavailable; try again.".to_owned())
                        }
                    },
                    Err(e) => Err(e),
                },
                _ => Err("Resume expects one argument: the cursor string.".to_owned()),
            },
            Some(HubMethod::SubscribeToTask) => match arguments.as_slice() {
                [Value::String(task)] => Box::pin(self.subscribe_to_task(task)).await,
                _ => Err("SubscribeToTask expects one argument: the task id.".to_owned()),
            },
            Some(m @ (HubMethod::SubscribeToVirtualKey | HubMethod::UnsubscribeFromVirtualKey)) => {
                match arguments.as_slice() {
                    [v] => match herald_domain::KeyRef::parse("virtualKeyId", v) {
                        Ok(herald_domain::KeyRef::Id(id)) => {
                            if m == HubMethod::SubscribeToVirtualKey {
                                self.filters().admin_keys.insert(id);
                            } else if let Some(f) = &mut self.filters {
                                f.admin_keys.remove(&id);
                            }
                            Ok("null".to_owned())
                        }
                        _ => Err("Expected one argument: the virtual key id.".to_owned()),
                    },
                    _ => Err("Expected one argument: the virtual key id.".to_owned()),
                }
            }
            Some(HubMethod::UnsubscribeFromTask) => match arguments.as_slice() {
                [Value::String(task)] => {
                    if let Some(f) = &mut self.filters {
                        f.tasks.remove(task);
                    }
                    Ok("null".to_owned())
                }
                _ => Err("UnsubscribeFromTask expects one argument: the task id.".to_owned()),
            },
        };
        // Without an invocation id the client expects no completion.
        let Some(id) = invocation_id else {
            return Ok(());
        };
        let record = match outcome {
            Ok(result) => protocol::completion_result(&id, &result),
            Err(error) => protocol::completion_error(&id, &error),
        };
        self.send(record).await
    }

    /// Checks that the caller may see the task and returns its latest state (Conduit's
    /// HubException messages on refusal).
    fn filters(&mut self) -> &mut Filters {
        self.filters.get_or_insert_default()
    }

    async fn subscribe_to_task(&mut self, task: &str) -> Result<String, String> {
        let state = match self.gw.backplane.task(task).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("Task not found".to_owned()),
            Err(e) => {
                tracing::warn!(connection = %self.connection_id, error = %e, "task lookup failed");
                return Err("Task state unavailable; try again.".to_owned());
            }
        };
        let owns = self
            .own_key
            .as_ref()
            .is_some_and(|(id, _)| *id == state.virtual_key_id);
        if !owns && !self.is_admin {
            return Err("Unauthorized access to task".to_owned());
        }
        self.filters().tasks.insert(task.to_owned());
        serde_json::to_string(&state).map_err(|_| "Task state unavailable; try again.".to_owned())
    }

    /// Conduit's task hub: the object event (image/video families) plus the positional method
    /// for its phase; generic `Task*` events only positionally. `false` when nothing is
    /// written (another task than the ones subscribed, or a phase without a method).
    fn render_conduit_task(&self, d: &Delivery, cursor: &str, buf: &mut String) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(d.event.payload.get()) else {
            return false;
        };
        let task_id = v["taskId"].as_str().unwrap_or_default();
        if let Some(f) = &self.filters
            && !f.tasks.is_empty()
            && !f.tasks.contains(task_id)
        {
            return false;
        }
        let generic = d.event.name.starts_with("Task");
        let mut wrote = false;
        if !generic {
            protocol::push_invocation(buf, &d.event.name, d.event.payload.get(), Some(cursor));
            wrote = true;
        }
        let id = Value::String(task_id.to_owned());
        let or_null = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
        let positional = match v["status"].as_str() {
            Some("running") => Some((
                "TaskProgress",
                vec![id, or_null("progress"), or_null("message")],
            )),
            Some("completed") => Some(("TaskCompleted", vec![id, or_null("result")])),
            Some("failed") => Some((
                "TaskFailed",
                vec![
                    id,
                    or_null("error"),
                    v.get("isRetryable").cloned().unwrap_or(Value::Bool(false)),
                ],
            )),
            Some("cancelled") => {
                let reason = v
                    .get("reason")
                    .or(v.get("message"))
                    .or(v.get("error"))
                    .cloned()
                    .unwrap_or(Value::Null);
                Some(("TaskCancelled", vec![id, reason]))
            }
            _ => None,
        };
        if let Some((target, args)) = positional {
            protocol::push_positional(buf, target, &args);
            wrote = true;
        }
        wrote
    }

    fn listens_to(&self, audience: Audience) -> bool {
        self.subscriptions.iter().any(|s| s.audience() == audience)
    }

    /// Appends the record for `d` to `buf` unless the connection already has it or the hub does
    /// not forward it; either way its position counts as delivered. Returns whether a record
    /// was written.
    fn render(&mut self, d: &Delivery, buf: &mut String) -> bool {
        // Defence in depth for "never another key's events": only our own audiences.
        if !self.listens_to(d.audience) {
            return false;
        }
        if self
            .delivered
            .get(d.audience)
            .is_some_and(|last| d.position <= last)
        {
            return false;
        }
        self.delivered.set(d.audience, d.position);
        self.write(d, buf)
    }

    /// Appends the record for `d` (already known to be undelivered) to `buf` if the hub and the
    /// connection's filters forward it.
    fn write(&mut self, d: &Delivery, buf: &mut String) -> bool {
        if let Some((own, _)) = &self.own_key
            && d.audience == Audience::Key(*own)
            && KEY_CHANGES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&d.event.name))
        {
            self.recheck_key = true;
        }
        if !self.hub.forwards(&d.event.name) {
            return false;
        }
        if let Some(f) = &self.filters
            && !f.admin_keys.is_empty()
            && d.event.key_id.is_some_and(|k| !f.admin_keys.contains(&k))
        {
            return false;
        }
        let cursor = self.delivered.encode();
        let wrote = if self.hub.conduit_tasks {
            self.render_conduit_task(d, &cursor, buf)
        } else {
            protocol::push_invocation(buf, &d.event.name, d.event.payload.get(), Some(&cursor));
            true
        };
        if wrote {
            self.delivered_total.inc();
        }
        wrote
    }

    /// Not an `async fn`: the frame is built before the future starts, so the future (part of
    /// the loop's, which every idle connection holds) keeps neither `r` nor a `Delivery`.
    fn on_mailbox(&mut self, r: Received) -> impl Future<Output = Step> + Send + '_ {
        let buf = match r {
            Received::Delivery(d) => self.batch(&d).ok_or(true),
            Received::Overflowed => Err(true),
            Received::Closed => Err(false),
        };
        async move {
            match buf {
                Err(true) => return self.slow_consumer().await,
                Err(false) => return self.close(Some("Subscription lost."), true).await,
                Ok(buf) if !buf.is_empty() => self.send(buf).await?,
                Ok(_) => {}
            }
            if std::mem::take(&mut self.recheck_key) {
                Box::pin(self.recheck_key()).await?;
            }
            Ok(())
        }
    }

    /// The frame for `first` and everything already queued behind it (up to about
    /// `FRAME_TARGET`); `None` when the mailbox overflowed. Not async: the loop's future,
    /// held by every idle connection, holds none of this.
    fn batch(&mut self, first: &Delivery) -> Option<String> {
        let mut buf = String::new();
        self.render(first, &mut buf);
        while buf.len() < FRAME_TARGET {
            match self.receiver.try_recv() {
                Some(Received::Delivery(d)) => {
                    self.render(&d, &mut buf);
                }
                Some(Received::Overflowed) => return None,
                Some(Received::Closed) | None => break,
            }
        }
        Some(buf)
    }

    /// Closes the connection when its key was deleted, disabled, expired or re-hashed; picks up
    /// a changed expiry. A store outage keeps the connection (the next change re-checks).
    async fn recheck_key(&mut self) -> Step {
        let Some((id, hash)) = self.own_key.clone() else {
            return Ok(());
        };
        match self.gw.store.key_by_id(id).await {
            Ok(Some(k)) if k.key_hash == hash && k.is_usable(chrono::Utc::now()) => {
                self.key_expires = expiry_instant(k.expires_at);
                Ok(())
            }
            Ok(Some(_)) => {
                self.close(Some("The key was disabled or has expired."), false)
                    .await
            }
            Ok(None) => self.close(Some("The key was deleted."), false).await,
            Err(e) => {
                tracing::warn!(connection = %self.connection_id, error = %e, "key re-check failed");
                Ok(())
            }
        }
    }

    async fn slow_consumer(&mut self) -> Step {
        tracing::info!(connection = %self.connection_id, hub = self.hub.name, "slow consumer closed");
        metrics().slow_consumer_closes.with(self.hub.name).inc();
        self.close(Some("slow consumer: outbound queue full"), true)
            .await
    }

    /// Replays, per audience named in `from`, every event after `from` this connection has
    /// not delivered, in stream order within each part: first those between `from` and the
    /// connection's floor (older than anything it sent live), then those after what it
    /// delivered that have not arrived live yet. Returns the number of events sent.
    fn replay<'a>(&'a mut self, from: &'a Cursor) -> Boxed<'a, Result<usize, ReplayError>> {
        Box::pin(self.replay_now(from))
    }

    async fn replay_now(&mut self, from: &Cursor) -> Result<usize, ReplayError> {
        let mut sent = 0;
        for i in 0..self.subscriptions.len() {
            let audience = self.subscriptions[i].audience();
            let Some(requested) = from.get(audience) else {
                continue;
            };
            let floor = self.floors.get(audience);
            let mut noted = false;
            if let Some(floor) = floor
                && requested < floor
            {
                // Events the connection never had: published before it connected.
                sent += self
                    .replay_history(audience, requested, Some(floor), true)
                    .await?;
                noted = true;
                self.floors.set(audience, requested);
            }
            let start = match self.delivered.get(audience) {
                Some(last) if last > requested => last,
                _ => requested,
            };
            // Live events up to here are already with the client: skip them when they arrive.
            self.delivered.set(audience, start);
            sent += self.replay_history(audience, start, None, !noted).await?;
        }
        Ok(sent)
    }

    /// Sends the history of `audience` after `after`, page by page. With `until`: only up to
    /// it, without moving `delivered` (these events are older than what the connection already
    /// sent). Without: through `render`, which skips what was delivered and moves `delivered`
    /// along. `note`: count the resume (and report a gap) on the first page. Returns the number
    /// of events sent.
    async fn replay_history(
        &mut self,
        audience: Audience,
        after: Position,
        until: Option<Position>,
        note: bool,
    ) -> Result<usize, ReplayError> {
        let page = self.gw.config.history_page;
        let mut after = after;
        let mut first = note;
        let mut sent = 0;
        loop {
            let history = self
                .gw
                .backplane
                .history(audience, Some(after), page)
                .await
                .map_err(|e| ReplayError::Unavailable(e.to_string()))?;
            let mut buf = String::new();
            if first {
                self.note_resume(audience, history.gap, &mut buf);
            }
            first = false;
            let mut done = history.events.len() < page;
            for d in &history.events {
                let wrote = match until {
                    Some(u) if d.position > u => {
                        done = true;
                        break;
                    }
                    Some(_) => self.listens_to(d.audience) && self.write(d, &mut buf),
                    None => self.render(d, &mut buf),
                };
                if wrote {
                    sent += 1;
                }
                if buf.len() >= FRAME_TARGET {
                    self.send(std::mem::take(&mut buf)).await?;
                }
            }
            if !buf.is_empty() {
                self.send(buf).await?;
            }
            match history.events.last() {
                Some(d) if !done => after = d.position,
                _ => break,
            }
        }
        Ok(sent)
    }

    /// Counts a resume and, when history no longer reaches back to the cursor, puts a
    /// `ResumeGap` record in `buf`.
    fn note_resume(&mut self, audience: Audience, gap: bool, buf: &mut String) {
        let outcome = if gap { "gap" } else { "replayed" };
        metrics().resumes.with(outcome).inc();
        if gap {
            let payload = format!("{{\"audience\":\"{audience}\"}}");
            let cursor = self.delivered.encode();
            protocol::push_invocation(buf, "ResumeGap", &payload, Some(&cursor));
        }
    }

    /// Not an `async fn` (nor an async block), which would keep `text` and a second copy of
    /// the sink's future in its own.
    fn send(&mut self, text: String) -> impl Future<Output = Step> + Send + '_ {
        let last_sent = &mut self.last_sent;
        SinkExt::send(&mut self.ws, Message::Text(text.into())).map(move |r| {
            r.map_err(|_| Stop)?;
            *last_sent = Instant::now();
            Ok(())
        })
    }

    /// Sends a SignalR Close and ends the WebSocket. Always `Err(Stop)`: the session is over.
    fn close<'a>(&'a mut self, error: Option<&'a str>, allow_reconnect: bool) -> Boxed<'a, Step> {
        Box::pin(self.close_now(error, allow_reconnect))
    }

    async fn close_now(&mut self, error: Option<&str>, allow_reconnect: bool) -> Step {
        tracing::debug!(connection = %self.connection_id, error, allow_reconnect, "closing");
        let record = protocol::close(error, allow_reconnect);
        let _ = tokio::time::timeout(CLOSE_GRACE, self.send(record)).await;
        self.close_socket().await;
        Err(Stop)
    }

    /// WebSocket close handshake, bounded in time. Waiting for the client's close reply lets
    /// it read our last frames before the TCP connection goes away.
    async fn close_socket(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let frame = CloseFrame {
                code: 1000,
                reason: "".into(),
            };
            if self.ws.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = self.ws.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds this future (in its task) for as long as it is open, so
    /// its size is per-connection memory (DESIGN §9). Rare steps are boxed to keep it so; this
    /// fails when a change makes it grow again.
    #[test]
    fn an_idle_connection_future_stays_small() {
        fn future_size<F>(_: impl FnOnce(WebSocket, Arc<Inner>, Setup) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(run);
        assert!(size <= 1152, "session future is {size} bytes");
    }

    #[test]
    fn drain_delays_fall_inside_the_window_and_spread_over_it() {
        assert_eq!(drain_delay(Duration::ZERO), Duration::ZERO);
        let window = Duration::from_secs(10);
        let delays: Vec<Duration> = (0..1000).map(|_| drain_delay(window)).collect();
        assert!(delays.iter().all(|d| *d < window));
        // Both halves of the window are used (a constant delay would be a reconnect storm).
        assert!(delays.iter().any(|d| *d < window / 2) && delays.iter().any(|d| *d >= window / 2));
    }
}
