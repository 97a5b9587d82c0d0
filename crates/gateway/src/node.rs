//! One gateway node: its settings and the state its connections share.
use crate::caps::Caps;
use crate::origins::AllowedOrigins;
use crate::transports::held::HeldConnections;
use crate::transports::replies::Replies;
use herald_backplane::SharedBackplane;
use herald_store::SharedStore;
use rand::RngCore;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Gateway settings. `Default` gives the values in docs/protocol.md, "Limits and timeouts", and a random token secret (fine
/// for one node; every node of a cluster needs the same `token_secret`).
#[derive(Clone)]
pub struct GatewayConfig {
    /// `HERALD_MASTER_KEY`: opens the admin hub.
    pub master_key: Option<String>,
    /// Signs connection tokens (HMAC-SHA256).
    pub token_secret: Vec<u8>,
    /// A Ping is sent when nothing else was sent for this long.
    pub keepalive_interval: Duration,
    /// A client that sends nothing for this long is closed.
    pub client_timeout: Duration,
    /// The handshake request must arrive this soon after the upgrade.
    pub handshake_timeout: Duration,
    /// Largest client message (WebSocket message / record) accepted.
    pub max_message_bytes: usize,
    /// Bytes of undelivered events a connection may have queued before it is closed as a slow
    /// consumer (it resumes from its cursor).
    pub outbound_queue_bytes: usize,
    /// How long a negotiated connection token stays valid.
    pub connection_token_ttl: Duration,
    /// Events read from history per backplane call when resuming.
    pub history_page: usize,
    /// On shutdown, each connection is closed (with `allowReconnect`) after a random delay
    /// within this window, so clients do not all reconnect at the same moment.
    pub drain_window: Duration,
    /// Pages (origins) allowed to use the hubs from a browser.
    pub allowed_origins: AllowedOrigins,
    /// A long poll with nothing to deliver is answered (empty) after this long, below the idle
    /// timeouts of common proxies (60 s).
    pub long_poll_timeout: Duration,
    /// Hub connections one key (or the master key) may hold open on this node, every
    /// transport counted; more are refused with 429 before the upgrade.
    pub max_connections_per_key: usize,
    /// Hub connections one client address (IPv6: one /64) may hold open on this node.
    pub max_connections_per_address: usize,
    /// Newest events `GetSpendSummary` lists (`HERALD_SPEND_SUMMARY_TRANSACTIONS`).
    pub spend_summary_transactions: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self {
            master_key: None,
            token_secret: secret,
            keepalive_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_bytes: 32 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            connection_token_ttl: Duration::from_secs(300),
            history_page: 200,
            drain_window: Duration::from_secs(10),
            allowed_origins: AllowedOrigins::None,
            long_poll_timeout: Duration::from_secs(20),
            max_connections_per_key: 1000,
            max_connections_per_address: 1000,
            spend_summary_transactions: 20,
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "<redacted>"),
            )
            .field("token_secret", &"<redacted>")
            .field("keepalive_interval", &self.keepalive_interval)
            .field("client_timeout", &self.client_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("connection_token_ttl", &self.connection_token_ttl)
            .field("history_page", &self.history_page)
            .field("drain_window", &self.drain_window)
            .field("allowed_origins", &self.allowed_origins)
            .field("long_poll_timeout", &self.long_poll_timeout)
            .field("max_connections_per_key", &self.max_connections_per_key)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field(
                "spend_summary_transactions",
                &self.spend_summary_transactions,
            )
            .finish()
    }
}

/// The hub endpoints of one node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<NodeState>,
}

/// What every connection of this node shares.
pub(crate) struct NodeState {
    pub(crate) config: GatewayConfig,
    pub(crate) store: SharedStore,
    pub(crate) backplane: SharedBackplane,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Wakes every open connection's loop when `shutdown` turns true.
    pub(crate) drain: tokio::sync::Notify,
    pub(crate) connections: AtomicUsize,
    /// Notified whenever the last open connection closes.
    pub(crate) idle: tokio::sync::Notify,
    /// Server-Sent Events and long-polling connections whose session runs on this node.
    pub(crate) held: Arc<HeldConnections>,
    /// Per-key and per-address caps on open hub connections.
    pub(crate) caps: Arc<Caps>,
    /// Answers to the requests this node relays to the nodes holding their connections.
    pub(crate) replies: Replies,
}

impl NodeState {
    /// A connection opened: counted in [`Gateway::connections`].
    pub(crate) fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed; the last one wakes whoever waits in [`Gateway::closed`].
    pub(crate) fn closed(&self) {
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Gateway {
    pub fn new(
        mut config: GatewayConfig,
        store: SharedStore,
        backplane: SharedBackplane,
    ) -> Gateway {
        if config.token_secret.is_empty() {
            tracing::warn!("empty connection token secret; using a random one for this node");
            config.token_secret = GatewayConfig::default().token_secret;
        }
        // Zero would spin the session timer.
        config.keepalive_interval = config.keepalive_interval.max(Duration::from_millis(10));
        config.client_timeout = config.client_timeout.max(Duration::from_millis(10));
        config.history_page = config.history_page.max(1);
        config.long_poll_timeout = config.long_poll_timeout.max(Duration::from_millis(10));
        // Zero would refuse every connection.
        config.max_connections_per_key = config.max_connections_per_key.max(1);
        config.max_connections_per_address = config.max_connections_per_address.max(1);
        let (shutdown, _) = watch::channel(false);
        Gateway {
            inner: Arc::new(NodeState {
                store,
                backplane,
                shutdown,
                drain: tokio::sync::Notify::new(),
                connections: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                held: Arc::default(),
                replies: Replies::new(),
                caps: Caps::new(
                    config.max_connections_per_key,
                    config.max_connections_per_address,
                ),
                config,
            }),
        }
    }

    /// Closes every connection with `Close{allowReconnect:true}` and refuses new ones (503).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        // After the flag: a loop that missed this wake-up reads the flag (`Session::main_loop`).
        self.inner.drain.notify_waiters();
    }

    /// Open connections on this node (every transport).
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Resolves once no connection is open (at once if none is). Shutdown waits on this
    /// rather than polling the count.
    pub async fn closed(&self) {
        loop {
            // Registered before the count is read: a close after the read still wakes it.
            let idle = self.inner.idle.notified();
            if self.connections() == 0 {
                return;
            }
            idle.await;
        }
    }
}
