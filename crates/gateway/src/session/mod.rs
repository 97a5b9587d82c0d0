//! One task per connection: handshake, then a single loop over the socket, the mailbox, a
//! timer (keep-alive ping, client timeout, key expiry) and shutdown. This file holds the
//! connection's state and its loop; its parts are in the submodules: `handshake`, `delivery`
//! (rendering events into frames), `replay` (resume from history) and `methods` (hub methods
//! called by the client). Replays for resume run inline, before the live events queued
//! meanwhile, which are deduplicated by position.
mod delivery;
mod handshake;
mod methods;
mod out;
mod replay;

use crate::auth::Principal;
use crate::caps::Slot;
use crate::cursor::Cursor;
use crate::hubs::Hub;
use crate::node::NodeState;
use crate::protocol::{ClientMessage, Protocol};
use crate::wire::Wire;
use axum::extract::ws::{CloseFrame, Message};
use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_backplane::{MailboxReceiver, Subscription};
use herald_domain::{KeyHash, KeyId};
use herald_telemetry::metrics;
use herald_telemetry::metrics::{Counter, Gauge};
use out::Frame;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Records are batched into one WebSocket frame up to about this size.
pub(super) const FRAME_TARGET: usize = 16 * 1024;

/// How long closing may take (sending the Close, waiting for the client's close reply).
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the upgrade handler established for a connection.
pub(crate) struct Setup {
    pub hub: &'static Hub,
    pub principal: Principal,
    /// The connection's place under the per-key and per-address caps, given back on drop.
    pub slot: Slot,
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
pub(super) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The session is over (socket gone or closed by us).
pub(super) struct Stop;

pub(super) type Step = Result<(), Stop>;

pub(super) enum ReplayError {
    Stop,
    Unavailable(herald_backplane::BackplaneError),
}

impl From<Stop> for ReplayError {
    fn from(_: Stop) -> Self {
        ReplayError::Stop
    }
}

pub(super) struct Session {
    ws: Wire,
    gw: Arc<NodeState>,
    /// The hub protocol chosen at the handshake (JSON until then).
    proto: Protocol,
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
    /// Held for as long as the session lives: the caps count it until then.
    _slot: Slot,
}

#[derive(Default)]
pub(super) struct Filters {
    /// Tasks named by `SubscribeToTask`; on a Conduit task hub, once any is named, only
    /// these tasks' events are delivered.
    tasks: std::collections::HashSet<String>,
    /// Admin hub: keys named by `SubscribeToVirtualKey`; once any is named, other keys'
    /// events are skipped (global ones still pass).
    admin_keys: std::collections::HashSet<KeyId>,
}

/// Counts an open connection in `herald_connections` from handshake to close.
pub(super) struct Live(Arc<Gauge>);

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

pub(super) fn expiry_instant(expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Option<Instant> {
    expires_at.map(|t| {
        let left = (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
        later(Instant::now(), left)
    })
}

pub(super) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
}

/// A uniformly random point in `[0, window)`: spreads reconnects over the drain window.
pub(super) fn drain_delay(window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::random_range(0..millis))
}

/// Resolves once shutdown is requested (never if the gateway is gone).
pub(super) async fn stopping(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts the connection in `Gateway::connections` (from here until the session is dropped).
impl Drop for Session {
    fn drop(&mut self) {
        self.gw.closed();
    }
}

/// The connection's future. Not an `async fn`: the session is built here, so the future holds
/// it once instead of also keeping the arguments it was built from.
pub(crate) fn run(ws: Wire, gw: Arc<NodeState>, setup: Setup) -> impl Future<Output = ()> + Send {
    gw.opened();
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
        proto: Protocol::Json,
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
        _slot: setup.slot,
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
    pub(super) async fn serve(&mut self) -> Step {
        // Boxed: the start is large and runs once; the loop is what an idle connection holds.
        let _live = Box::pin(self.start()).await?;
        self.main_loop().await
    }

    /// Handshake, the resume of `?cursor=`, and the records that came with the handshake.
    pub(super) async fn start(&mut self) -> Result<Live, Stop> {
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

    pub(super) fn next_deadline(&self) -> Instant {
        let c = &self.gw.config;
        let ping = later(self.last_sent, c.keepalive_interval);
        let timeout = later(self.last_received, c.client_timeout);
        let t = ping.min(timeout);
        let t = self.drain_at.map_or(t, |d| t.min(d));
        self.key_expires.map_or(t, |k| t.min(k))
    }

    pub(super) async fn main_loop(&mut self) -> Step {
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
    pub(super) async fn begin_drain(&mut self) -> Step {
        let delay = drain_delay(self.gw.config.drain_window);
        if delay.is_zero() {
            return self.close(Some("Server is shutting down."), true).await;
        }
        self.drain_at = Some(later(Instant::now(), delay));
        Ok(())
    }

    pub(super) async fn on_timer(&mut self) -> Step {
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
            self.send(out::ping(self.proto)).await?;
        }
        Ok(())
    }

    pub(super) async fn on_frame(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
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
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, self.ws.next())).await;
                Err(Stop)
            }
        }
    }

    /// Handles the records (JSON) or messages (MessagePack) in `data`, plus any incomplete one
    /// carried over.
    pub(super) async fn on_data(&mut self, data: &[u8]) -> Step {
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
        loop {
            let (record, tail) = match out::take_message(self.proto, rest, max) {
                Ok(Some(split)) => split,
                Ok(None) => break,
                Err(e) => return self.close(Some(&e), false).await,
            };
            rest = tail;
            if !out::is_blank(self.proto, record) {
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

    pub(super) async fn on_record(&mut self, record: &[u8]) -> Step {
        match out::parse_message(self.proto, record) {
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
                    let error = format!(
                        "Streaming is not supported (method '{}').",
                        herald_domain::invalid::prefix(&target)
                    );
                    self.send(out::completion_error(self.proto, &id, &error))
                        .await
                }
                None => Ok(()),
            },
            Ok(ClientMessage::Ignored | ClientMessage::Ping) => Ok(()),
            Ok(ClientMessage::Close { .. }) => {
                // The client closes the socket itself; wait briefly for that.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.next()).await;
                Err(Stop)
            }
        }
    }

    /// Not an `async fn` (nor an async block), which would keep `text` and a second copy of
    /// the sink's future in its own. A write that cannot finish within the client timeout
    /// (a client that stopped reading or polling) ends the session: nothing else of it can run
    /// while a write is pending.
    pub(super) fn send(&mut self, frame: Frame) -> impl Future<Output = Step> + Send + '_ {
        let last_sent = &mut self.last_sent;
        let connection = &self.connection_id;
        let deadline = self.gw.config.client_timeout;
        let write = SinkExt::send(&mut self.ws, frame.into_message());
        tokio::time::timeout(deadline, write).map(move |r| match r {
            Ok(Ok(())) => {
                *last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(Stop),
            Err(_) => {
                tracing::debug!(%connection, "write deadline passed; client not reading");
                metrics().write_timeouts.inc();
                Err(Stop)
            }
        })
    }

    /// Sends a SignalR Close and ends the WebSocket. Always `Err(Stop)`: the session is over.
    pub(super) fn close<'a>(
        &'a mut self,
        error: Option<&'a str>,
        allow_reconnect: bool,
    ) -> Boxed<'a, Step> {
        Box::pin(self.close_now(error, allow_reconnect))
    }

    pub(super) async fn close_now(&mut self, error: Option<&str>, allow_reconnect: bool) -> Step {
        tracing::debug!(connection = %self.connection_id, error, allow_reconnect, "closing");
        let record = out::close(self.proto, error, allow_reconnect);
        let _ = tokio::time::timeout(CLOSE_GRACE, self.send(record)).await;
        self.close_socket().await;
        Err(Stop)
    }

    /// WebSocket close handshake, bounded in time. Waiting for the client's close reply lets
    /// it read our last frames before the TCP connection goes away.
    pub(super) async fn close_socket(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let frame = CloseFrame {
                code: 1000,
                reason: "".into(),
            };
            if SinkExt::send(&mut self.ws, Message::Close(Some(frame)))
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(m)) = self.ws.next().await {
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
    /// its size is per-connection memory (docs/benchmarks.md, "Targets"). Rare steps are boxed to keep it so; this
    /// fails when a change makes it grow again.
    #[test]
    fn an_idle_connection_future_stays_small() {
        fn future_size<F>(_: impl FnOnce(Wire, Arc<NodeState>, Setup) -> F) -> usize {
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
