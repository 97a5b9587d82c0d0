//! Builds each role from its settings and runs it until a shutdown signal.
use crate::configuration::{Secret, Settings};
use crate::http::{self, AdminApi, Readiness};
use crate::metrics::Metrics;
use herald_backplane::{
    BackplaneError, MemoryBackplane, RedisBackplane, RedisConfig, SharedBackplane,
};
use herald_domain::{KeyId, RawKey, VirtualKey};
use herald_gateway::{AllowedOrigins, Gateway, GatewayConfig};
use herald_ingest::amqp::{self, AmqpConfig};
use herald_ingest::{Pipeline, PipelineConfig};
use herald_store::{MemoryStore, PostgresStore, SharedStore, StoreError};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `HERALD_ALLOWED_ORIGINS`, or the role's default: any origin for `standalone` (local
/// development), none for `serve` until configured, said in the log.
fn allowed_origins(role: Role, settings: &Settings) -> AllowedOrigins {
    match (&settings.allowed_origins, role) {
        (Some(o), _) => o.clone(),
        (None, Role::Standalone) => AllowedOrigins::Any,
        (None, _) => {
            tracing::info!(
                "HERALD_ALLOWED_ORIGINS is not set: browser pages on other origins are refused \
                 (same-origin pages, SDKs and servers are not affected)"
            );
            AllowedOrigins::None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Consume,
    Serve,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Consume => "consume",
            Self::Serve => "serve",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
    #[error("migrations failed: {0}")]
    Migrations(#[source] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built, bound, not yet running node.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// `HERALD_ADMIN_LISTEN`: metrics, readiness and the admin API, off the client port.
    admin: Option<(TcpListener, axum::Router)>,
    limits: Arc<crate::server::Limits>,
    gateway: Option<Gateway>,
    consumer: Option<(AmqpConfig, Pipeline, Arc<AtomicBool>)>,
    drain_window: std::time::Duration,
    /// Printed once the node runs (standalone with generated credentials).
    pub banner: Vec<String>,
    /// The dashboard is served at `/`; with the demo key to put in its link (standalone).
    pub dashboard: Option<Option<String>>,
}

pub fn store_for(role: Role, settings: &Settings) -> Result<SharedStore, StartupError> {
    match &settings.database_url {
        Some(url) => Ok(Arc::new(PostgresStore::connect(url, 16, &settings.tls)?)),
        None if role == Role::Standalone => Ok(Arc::new(MemoryStore::new())),
        None => Err(StartupError::Config(format!(
            "HERALD_DATABASE_URL: herald {} needs PostgreSQL, expected a postgres:// URL (only standalone runs without one)",
            role.as_str()
        ))),
    }
}

fn backplane_for(role: Role, settings: &Settings) -> Result<SharedBackplane, StartupError> {
    match &settings.redis_url {
        Some(url) => {
            let mut cfg = RedisConfig::new(url.clone());
            cfg.prefix = settings.redis_prefix.clone();
            cfg.tls = settings.tls.clone();
            cfg.max_len = settings.history_maxlen;
            cfg.ttl = settings.history_ttl;
            let bp: SharedBackplane = RedisBackplane::connect(cfg)?;
            Ok(bp)
        }
        None if role == Role::Standalone => {
            Ok(Arc::new(MemoryBackplane::new(settings.history_maxlen)))
        }
        None => Err(StartupError::Config(format!(
            "HERALD_REDIS_URL: herald {} needs Redis, expected a redis:// URL (only standalone runs without one)",
            role.as_str()
        ))),
    }
}

/// Every node of a deployment must derive the same secret, so it comes from configuration.
fn token_secret(settings: &Settings) -> Vec<u8> {
    match (&settings.connection_secret, &settings.master_key) {
        (Some(s), _) => s.expose().as_bytes().to_vec(),
        (None, Some(m)) => {
            Sha256::digest(format!("herald connection token secret:{}", m.expose())).to_vec()
        }
        (None, None) => {
            tracing::warn!(
                "neither HERALD_CONNECTION_SECRET nor HERALD_MASTER_KEY is set: connection tokens are only valid on this node"
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    }
}

impl Application {
    pub async fn build(role: Role, mut settings: Settings) -> Result<Self, StartupError> {
        let mut banner = Vec::new();
        if role == Role::Consume && settings.amqp_url.is_none() {
            return Err(StartupError::Config(
                "HERALD_AMQP_URL: herald consume needs RabbitMQ, expected an amqp:// URL".into(),
            ));
        }
        if settings.migrate
            && let Some(url) = &settings.database_url
        {
            let applied = herald_store::migrate(url, &settings.tls)
                .await
                .map_err(StartupError::Migrations)?;
            tracing::info!(?applied, "migrations applied");
        }
        let store = store_for(role, &settings)?;
        let backplane = backplane_for(role, &settings)?;
        if role == Role::Standalone && settings.master_key.is_none() {
            let generated = format!(
                "herald_master_{}",
                &RawKey::generate().expose()[RawKey::PREFIX.len()..]
            );
            banner.push(format!("master key: {generated}"));
            settings.master_key = Some(Secret::new(generated));
        }
        let mut demo_key = None;
        if role == Role::Standalone && settings.database_url.is_none() {
            let raw = RawKey::generate();
            let id = KeyId::new(1).map_err(|e| StartupError::Config(e.to_string()))?;
            let mut demo = VirtualKey::new(id, raw.hash(), "demo");
            demo.budget = Some(Decimal::new(1000, 2));
            store.put_key(&demo).await?;
            banner.push(format!(
                "demo virtual key (id 1, budget 10.00): {}",
                raw.expose()
            ));
            demo_key = Some(raw.expose().to_owned());
        }
        let pipeline = Pipeline::new(
            PipelineConfig {
                thresholds: settings.budget_thresholds.clone(),
                rates: settings.rates.config(),
            },
            store.clone(),
            backplane.clone(),
        );
        let consumer_active = Arc::new(AtomicBool::new(false));
        // `serve` is the gateway role only (docs/operations.md, "Roles"): it never consumes, even when the shared
        // configuration of a deployment gives it HERALD_AMQP_URL.
        let amqp_url = settings.amqp_url.clone().filter(|_| role != Role::Serve);
        let consumer = amqp_url.map(|url| {
            let cfg = AmqpConfig {
                url,
                queue: settings.amqp_queue.clone(),
                bind: settings
                    .amqp_bind
                    .clone()
                    .unwrap_or_else(amqp::default_bindings),
                prefetch: settings.amqp_prefetch,
                tls: settings.tls.clone(),
            };
            (cfg, pipeline.clone(), consumer_active.clone())
        });
        let readiness = Readiness {
            store: settings.database_url.as_ref().map(|_| store.clone()),
            backplane: settings.redis_url.as_ref().map(|_| backplane.clone()),
            consumer: consumer.as_ref().map(|_| consumer_active.clone()),
        };
        let metrics = Arc::new(Metrics::new(role.as_str(), settings.node_id.clone()));
        let admin_api = AdminApi {
            master_key: settings.master_key.as_ref().map(|k| k.expose().to_owned()),
            pipeline,
            store: store.clone(),
            body_timeout: settings.http.http_body_timeout,
            max_event_body: settings.http.http_max_event_body,
        };
        // With an admin listener the client port serves clients only (docs/security.md); without
        // one, a single port serves everything, as before HERALD_ADMIN_LISTEN existed.
        let internal = http::internal_routes(readiness, metrics);
        let (mut router, admin_router) = match settings.admin_listen {
            Some(_) => (
                http::client_health_routes(),
                Some(internal.merge(http::admin_routes(admin_api.clone()))),
            ),
            None if role == Role::Consume => (internal, None),
            None => (internal.merge(http::admin_routes(admin_api.clone())), None),
        };
        let mut gateway = None;
        if role != Role::Consume {
            let config = GatewayConfig {
                master_key: settings.master_key.as_ref().map(|k| k.expose().to_owned()),
                token_secret: token_secret(&settings),
                drain_window: settings.drain_window,
                allowed_origins: allowed_origins(role, &settings),
                long_poll_timeout: settings.long_poll_timeout,
                max_connections_per_key: settings.max_connections_per_key,
                max_connections_per_address: settings.max_connections_per_address,
                spend_summary_transactions: settings.rates.spend_summary_transactions,
                ..GatewayConfig::default()
            };
            let g = Gateway::new(config, store, backplane.clone());
            router = router.merge(g.router());
            gateway = Some(g);
        }
        // HERALD_DASHBOARD, or the role's default: on for standalone, off for serve.
        let dashboard = (role != Role::Consume
            && settings.dashboard.unwrap_or(role == Role::Standalone))
        .then_some(demo_key);
        if dashboard.is_some() {
            router = router.merge(crate::dashboard::routes());
        }
        let listener = bind(settings.listen).await?;
        let admin = match (settings.admin_listen, admin_router) {
            (Some(addr), Some(r)) => Some((bind(addr).await?, r)),
            _ => None,
        };
        Ok(Self {
            listener,
            router,
            admin,
            limits: crate::server::Limits::new(settings.http.clone()),
            gateway,
            consumer,
            banner,
            dashboard,
            drain_window: settings.drain_window,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// Where `/metrics`, `/readyz` and the admin API are served when `HERALD_ADMIN_LISTEN` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Runs until `shutdown` flips to true, then stops the consumer and closes connections.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), std::io::Error> {
        let consumer: Option<JoinHandle<()>> = self.consumer.map(|(cfg, pipeline, active)| {
            tokio::spawn(amqp::run_consumer(cfg, pipeline, shutdown.clone(), active))
        });
        let gateway = self.gateway.clone();
        let mut stop = shutdown.clone();
        let gateway_for_close = gateway.clone();
        let admin = self.admin.map(|(listener, router)| {
            let mut stop = shutdown.clone();
            tokio::spawn(crate::server::serve(
                listener,
                router,
                // Its own connection limit: a flood of clients never locks the operator out.
                crate::server::Limits::new(self.limits.http.clone()),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))
        });
        let serve = crate::server::serve(self.listener, self.router, self.limits, async move {
            let _ = stop.wait_for(|s| *s).await;
            if let Some(g) = gateway {
                g.shutdown();
            }
        });
        let result = serve.await;
        if let Some(a) = admin {
            let _ = a.await;
        }
        let _ = shutdown.wait_for(|s| *s).await;
        // axum's graceful shutdown does not wait for upgraded WebSockets: wait for the drain
        // window (connections close spread over it) plus time for the last Close frames.
        if let Some(g) = &gateway_for_close {
            let limit = self.drain_window + std::time::Duration::from_secs(5);
            let _ = tokio::time::timeout(limit, g.closed()).await;
        }
        if let Some(c) = consumer {
            let _ = c.await;
        }
        result
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { addr, source })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
