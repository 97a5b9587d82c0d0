//! Redis Cluster (docs/decisions.md, "Backplane"). Selected by a `redis+cluster://[user:pass@]host:port,host:port[/]`
//! URL (`rediss+cluster://` over TLS), or by a comma-separated list of `redis://` (`rediss://`)
//! node URLs; any node of the cluster is enough to find the others.
//!
//! Long because: one purpose, following the cluster's slot map for sharded pub/sub (a
//! subscriber connection per shard, resubscribing when slots move, filling each shard's gap);
//! its parts share the slot table.
//!
//! Commands go through the `redis` crate's cluster connection, which routes each one to the
//! shard owning its key and follows MOVED/ASK: every key of an audience shares its hash tag, so
//! the publish script (dedupe + XADD + SPUBLISH) runs on one shard.
//!
//! The node's subscriptions are its own: one RESP3 connection per shard master that holds a
//! subscribed channel, each channel SSUBSCRIBEd (one per command) on the master owning its slot
//! (CRC16 of the hash tag; the slot map comes from CLUSTER SLOTS and is refreshed on MOVED or
//! when the server drops a channel whose slot moved). When a shard's connection drops (its
//! master restarted or failed over, or the connection was cut) or stops answering the periodic
//! PING, its audiences are subscribed again and each one's gap is filled from its stream, so
//! local listeners lose nothing; the other shards' audiences are not touched. (The crate's own
//! cluster pub/sub re-subscribes all channels of a node in one SSUBSCRIBE, which Redis refuses
//! with CROSSSLOT once a node holds channels of several slots, so it is not used.)
use crate::contract::{BackplaneError, unavailable};
use crate::entries::decode;
use crate::keys::RedisKeys;
use crate::position::Position;
use crate::router::Router;
use crate::streams::{LastPositions, Streams, dispatch, fill_gaps};
use crate::subscriber::SubscriberCommand;
use herald_domain::Audience;
use herald_domain::tls::ClientTls;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, ServerErrorKind, Value,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

/// The nodes to discover a Redis Cluster from.
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    nodes: Vec<ConnectionInfo>,
    /// CA and client certificate for TLS nodes (crate::tls).
    tls: ClientTls,
    /// The first node given, alone: node-to-node relay messages go through it.
    first: redis::Client,
}

impl ClusterTarget {
    /// `Ok(None)` for a single-server URL.
    pub(crate) fn parse(url: &str, tls: &ClientTls) -> Result<Option<Self>, BackplaneError> {
        let url = url.trim();
        let cluster = [
            ("redis+cluster://", "redis"),
            ("rediss+cluster://", "rediss"),
        ]
        .into_iter()
        .find_map(|(prefix, scheme)| Some((url.strip_prefix(prefix)?, scheme)));
        let node_urls: Vec<String> = if let Some((rest, scheme)) = cluster {
            let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((user, hosts)) => (format!("{user}@"), hosts),
                None => (String::new(), authority),
            };
            hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
                .collect()
        } else if url.contains(',') {
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            return Ok(None);
        };
        if node_urls.is_empty() {
            return Err(unavailable("invalid Redis Cluster URL: no node given"));
        }
        let nodes = node_urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                // The URL may hold a password: name the node by its position only.
                u.as_str().into_connection_info().map_err(|e| {
                    unavailable(format!("invalid Redis Cluster URL (node {}): {e}", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = nodes
            .first()
            .cloned()
            .ok_or_else(|| unavailable("invalid Redis Cluster URL: no node given"))
            .and_then(|n| {
                crate::tls::client(n, tls)
                    .map_err(|e| unavailable(format!("invalid Redis Cluster URL: {e}")))
            })?;
        let target = Self {
            nodes,
            tls: tls.clone(),
            first,
        };
        target
            .builder()
            .build()
            .map_err(|e| unavailable(format!("invalid Redis Cluster URL: {e}")))?;
        Ok(Some(target))
    }

    /// A plain client to the first node given.
    pub(crate) fn first_node_client(&self) -> redis::Client {
        self.first.clone()
    }

    fn builder(&self) -> ClusterClientBuilder {
        let builder = ClusterClientBuilder::new(self.nodes.clone());
        // `certs` turns TLS on by itself: only for TLS nodes.
        let builder = match crate::tls::certificates(&self.tls) {
            Some(certs) if self.nodes.iter().any(crate::tls::is_tls) => builder.certs(certs),
            _ => builder,
        };
        builder
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            // Enough to ride out a MOVED refresh or a short CLUSTERDOWN, not to hang a caller.
            .retries(5)
            .min_retry_wait(50)
            .max_retry_wait(1000)
    }

    /// A connection for commands; it reconnects and follows slot moves by itself.
    pub(crate) async fn command_connection(&self) -> Result<ClusterConnection, BackplaneError> {
        let client = self.builder().build().map_err(unavailable)?;
        match tokio::time::timeout(Duration::from_secs(5), client.get_async_connection()).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("timed out connecting to the Redis Cluster")),
        }
    }

    /// Connection details for the node at `addr` (`host:port`, from CLUSTER SLOTS): the
    /// first node's credentials and TLS, RESP3 (sharded messages arrive as pushes).
    fn node(&self, addr: &str) -> Result<redis::Client, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("bad node address {addr:?}"))?;
        let base = self.nodes.first().ok_or("no node")?.clone();
        let settings = base
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let addr = match base.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = base.set_addr(addr).set_redis_settings(settings);
        crate::tls::client(info, &self.tls).map_err(|e| e.to_string())
    }
}

/// Owns the node's sharded subscriptions: one RESP3 connection per shard master that holds a
/// subscribed channel, SSUBSCRIBE/SUNSUBSCRIBE of one channel per command.
pub(crate) struct ClusterSubscriber {
    target: ClusterTarget,
    names: Arc<RedisKeys>,
    router: Arc<Router>,
    probe: Duration,
    weak: Weak<dyn Streams>,
}

/// A shard master's address, `host:port`.
type Addr = String;

/// One shard master's subscriber connection; `id` tells a connection from its successors.
#[derive(Clone)]
struct ShardConn {
    conn: MultiplexedConnection,
    id: u64,
}

/// A push from a shard connection.
struct Push {
    addr: Addr,
    id: u64,
    info: PushInfo,
}

/// An SSUBSCRIBE that completed: on success, where, and the stream's newest position then.
struct Done {
    audience: Audience,
    result: Result<(Addr, u64, Option<Position>), String>,
}

/// State shared with the tasks that run subscription commands.
struct Pool {
    target: ClusterTarget,
    /// Slot ranges and their masters, from CLUSTER SLOTS (empty until first needed).
    slots: std::sync::Mutex<Vec<(u16, u16, Addr)>>,
    shards: Mutex<HashMap<Addr, ShardConn>>,
    next_id: AtomicU64,
    pushes: mpsc::UnboundedSender<Push>,
}

impl Pool {
    fn owner(&self, slot: u16) -> Option<Addr> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|(_, _, a)| a.clone())
    }

    async fn refresh_slots(&self, bp: &dyn Streams) -> Result<(), String> {
        let v = bp.cluster_slots().await.map_err(|e| e.to_string())?;
        let slots = parse_slots(v).ok_or("unexpected CLUSTER SLOTS reply")?;
        *self.slots.lock().unwrap_or_else(PoisonError::into_inner) = slots;
        Ok(())
    }

    /// The live connection to `addr`, made if there is none.
    async fn shard(&self, addr: &str) -> Result<ShardConn, String> {
        let mut shards = self.shards.lock().await;
        if let Some(s) = shards.get(addr) {
            return Ok(s.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tx = self.pushes.clone();
        let from = addr.to_owned();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_push_sender(move |info: PushInfo| {
                tx.send(Push {
                    addr: from.clone(),
                    id,
                    info,
                })
            });
        let client = self.target.node(addr)?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let s = ShardConn { conn, id };
        shards.insert(addr.to_owned(), s.clone());
        Ok(s)
    }

    /// Forgets connection `id` to `addr` (it dropped or stopped answering). True if it was
    /// the current one.
    async fn forget(&self, addr: &str, id: u64) -> bool {
        let mut shards = self.shards.lock().await;
        if shards.get(addr).is_some_and(|s| s.id == id) {
            shards.remove(addr);
            return true;
        }
        false
    }

    async fn is_current(&self, addr: &str, id: u64) -> bool {
        self.shards
            .lock()
            .await
            .get(addr)
            .is_some_and(|s| s.id == id)
    }

    /// SSUBSCRIBE `channel` on the master owning it, following one MOVED.
    async fn ssubscribe(&self, bp: &dyn Streams, channel: &str) -> Result<(Addr, u64), String> {
        let slot = key_slot(channel.as_bytes());
        if self.owner(slot).is_none() {
            self.refresh_slots(bp).await?;
        }
        let mut last_err = String::new();
        for _ in 0..2 {
            let addr = self
                .owner(slot)
                .ok_or_else(|| format!("no master serves slot {slot}"))?;
            let mut s = self.shard(&addr).await?;
            match redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query_async::<Value>(&mut s.conn)
                .await
            {
                Ok(_) => return Ok((addr, s.id)),
                Err(e) => {
                    last_err = e.to_string();
                    if e.kind() == ErrorKind::Server(ServerErrorKind::Moved) {
                        self.refresh_slots(bp).await?;
                        continue;
                    }
                    if e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_timeout() {
                        self.forget(&addr, s.id).await;
                    }
                    return Err(last_err);
                }
            }
        }
        Err(last_err)
    }
}

/// What the subscriber loop knows.
#[derive(Default)]
struct State {
    /// Confirmed subscriptions: audience → (master, connection id).
    subscribed: HashMap<Audience, (Addr, u64)>,
    /// Audiences with listeners that need an SSUBSCRIBE (again): retried on every probe tick.
    pending: HashSet<Audience>,
    inflight: HashSet<Audience>,
    /// In-flight audiences to subscribe once more when that completes (their connection
    /// dropped meanwhile).
    again: HashSet<Audience>,
    /// Subscribe requests waiting for an in-flight SSUBSCRIBE.
    waiters: HashMap<Audience, Vec<oneshot::Sender<Result<(), BackplaneError>>>>,
    /// The last subscription command per audience; the next one waits for it, so commands
    /// of one audience reach Redis in the order they were issued.
    ops: HashMap<Audience, JoinHandle<()>>,
    /// Audiences whose gap fill failed; retried on every probe tick.
    unfilled: HashSet<Audience>,
    /// Per audience: the last position handed on.
    seen: LastPositions,
    /// Per audience: the stream's newest position when the node subscribed; gap filling
    /// starts there for an audience that has delivered nothing yet.
    floors: LastPositions,
}

impl ClusterSubscriber {
    pub(crate) fn new(
        target: ClusterTarget,
        names: Arc<RedisKeys>,
        router: Arc<Router>,
        probe: Duration,
        weak: Weak<dyn Streams>,
    ) -> Self {
        Self {
            target,
            names,
            router,
            probe,
            weak,
        }
    }

    pub(crate) async fn run(self, mut commands: mpsc::UnboundedReceiver<SubscriberCommand>) {
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let pool = Arc::new(Pool {
            target: self.target.clone(),
            slots: std::sync::Mutex::new(Vec::new()),
            shards: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            pushes: push_tx,
        });
        let mut st = State::default();
        let mut probe = tokio::time::interval(self.probe);
        probe.tick().await;
        loop {
            tokio::select! {
                Some(p) = pushes.recv() => self.on_push(p, &pool, &done_tx, &mut st).await,
                Some(d) = done.recv() => self.on_done(d, &pool, &done_tx, &mut st).await,
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(SubscriberCommand::Subscribe(a, ack)) => {
                        if st.subscribed.contains_key(&a) {
                            let _ = ack.send(Ok(()));
                        } else {
                            st.waiters.entry(a).or_default().push(ack);
                            self.ssubscribe(a, &pool, &done_tx, &mut st);
                        }
                    }
                    Some(SubscriberCommand::Vacated(a)) => self.vacate(a, &pool, &mut st),
                },
                _ = probe.tick() => {
                    self.probe_shards(&pool, &mut st).await;
                    st.ops.retain(|_, op| !op.is_finished());
                    self.retry(&pool, &done_tx, &mut st).await;
                }
            }
        }
    }

    /// Starts an SSUBSCRIBE for `a` (after the audience's previous subscription command).
    fn ssubscribe(
        &self,
        a: Audience,
        pool: &Arc<Pool>,
        done: &mpsc::UnboundedSender<Done>,
        st: &mut State,
    ) {
        if !st.inflight.insert(a) {
            st.again.insert(a);
            return;
        }
        let pool = pool.clone();
        let channel = self.names.channel(a);
        let done = done.clone();
        let weak = self.weak.clone();
        let limit = self.probe.max(Duration::from_secs(5));
        let prev = st.ops.remove(&a);
        let op = tokio::spawn(async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let Some(bp) = weak.upgrade() else { return };
            let result =
                match tokio::time::timeout(limit, pool.ssubscribe(bp.as_ref(), &channel)).await {
                    Ok(Ok((addr, id))) => {
                        let last = tokio::time::timeout(limit, bp.last_position(a)).await;
                        Ok((addr, id, last.ok().and_then(Result::ok)))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timed out subscribing".to_owned()),
                };
            let _ = done.send(Done {
                audience: a,
                result,
            });
        });
        st.ops.insert(a, op);
    }

    /// Starts an SUNSUBSCRIBE of `a`'s channel on connection `id` to `addr`, if it is still
    /// the current one (after the audience's previous subscription command).
    fn sunsubscribe(&self, a: Audience, addr: Addr, id: u64, pool: &Arc<Pool>, st: &mut State) {
        let pool = pool.clone();
        let channel = self.names.channel(a);
        let prev = st.ops.remove(&a);
        let op = tokio::spawn(async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let conn = pool
                .shards
                .lock()
                .await
                .get(&addr)
                .filter(|s| s.id == id)
                .cloned();
            // A connection that is gone took the subscription with it.
            let Some(mut s) = conn else { return };
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                redis::cmd("SUNSUBSCRIBE")
                    .arg(&channel)
                    .query_async::<Value>(&mut s.conn),
            )
            .await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::debug!(%a, "sunsubscribe failed; dropping the shard connection");
                pool.forget(&addr, id).await;
            }
        });
        st.ops.insert(a, op);
    }

    async fn on_done(
        &self,
        d: Done,
        pool: &Arc<Pool>,
        done: &mpsc::UnboundedSender<Done>,
        st: &mut State,
    ) {
        let a = d.audience;
        st.inflight.remove(&a);
        let acks = st.waiters.remove(&a).unwrap_or_default();
        let again = st.again.remove(&a);
        let (addr, id, last) = match d.result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%a, error = %e, "ssubscribe failed");
                for ack in acks {
                    let _ = ack.send(Err(unavailable(e.to_string())));
                }
                if again {
                    self.ssubscribe(a, pool, done, st);
                }
                return;
            }
        };
        if !self.router.has_listeners(&a) {
            // The last listener left while this was in flight.
            st.pending.remove(&a);
            self.sunsubscribe(a, addr, id, pool, st);
            for ack in acks {
                let _ = ack.send(Ok(()));
            }
            return;
        }
        if again || !pool.is_current(&addr, id).await {
            // Confirmed on a connection that has dropped since: subscribe once more.
            st.pending.insert(a);
            self.ssubscribe(a, pool, done, st);
        } else {
            st.pending.remove(&a);
        }
        st.subscribed.insert(a, (addr, id));
        if st.seen.contains_key(&a) || st.floors.contains_key(&a) {
            // Subscribed again: replay what was missed meanwhile.
            self.fill(a, st).await;
        } else if let Some(p) = last {
            st.floors.insert(a, p);
        }
        for ack in acks {
            let _ = ack.send(Ok(()));
        }
    }

    fn vacate(&self, a: Audience, pool: &Arc<Pool>, st: &mut State) {
        if self.router.has_listeners(&a) {
            return;
        }
        st.seen.remove(&a);
        st.floors.remove(&a);
        st.pending.remove(&a);
        st.again.remove(&a);
        st.unfilled.remove(&a);
        if let Some((addr, id)) = st.subscribed.remove(&a) {
            self.sunsubscribe(a, addr, id, pool, st);
        }
    }

    /// The connection `id` to `addr` is gone: its audiences need subscribing again.
    async fn lost(&self, addr: &str, id: u64, pool: &Arc<Pool>, st: &mut State) {
        pool.forget(addr, id).await;
        let affected: Vec<Audience> = st
            .subscribed
            .iter()
            .filter(|(_, (a, i))| a == addr && *i == id)
            .map(|(&aud, _)| aud)
            .collect();
        if !affected.is_empty() {
            herald_telemetry::metrics().reconnects.with("redis").inc();
            tracing::info!(shard = %addr, audiences = affected.len(), "redis cluster shard connection lost; subscribing again");
        }
        for a in affected {
            st.subscribed.remove(&a);
            st.pending.insert(a);
        }
        // In-flight commands may have been confirmed on it just before.
        let inflight: Vec<Audience> = st.inflight.iter().copied().collect();
        st.again.extend(inflight);
    }

    /// PINGs every shard connection; one that does not answer in time is dropped.
    async fn probe_shards(&self, pool: &Arc<Pool>, st: &mut State) {
        let shards: Vec<(Addr, ShardConn)> = pool
            .shards
            .lock()
            .await
            .iter()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        let pings = shards.into_iter().map(|(addr, mut s)| async move {
            let r = tokio::time::timeout(
                self.probe,
                redis::cmd("PING").query_async::<Value>(&mut s.conn),
            )
            .await;
            (addr, s.id, matches!(r, Ok(Ok(_))))
        });
        for (addr, id, ok) in futures_util::future::join_all(pings).await {
            if ok {
                // Drop connections that hold no subscription any more.
                let used = st.subscribed.values().any(|(a, i)| *a == addr && *i == id);
                if !used && st.inflight.is_empty() && !st.ops.values().any(|op| !op.is_finished()) {
                    pool.forget(&addr, id).await;
                }
                continue;
            }
            tracing::warn!(shard = %addr, "redis cluster shard connection stopped answering; reconnecting");
            self.lost(&addr, id, pool, st).await;
        }
    }

    /// Subscribes the pending audiences again and retries the failed gap fills.
    async fn retry(&self, pool: &Arc<Pool>, done: &mpsc::UnboundedSender<Done>, st: &mut State) {
        st.pending.retain(|a| self.router.has_listeners(a));
        let todo: Vec<Audience> = st
            .pending
            .iter()
            .filter(|a| !st.inflight.contains(a))
            .copied()
            .collect();
        for a in todo {
            self.ssubscribe(a, pool, done, st);
        }
        let unfilled: Vec<Audience> = st.unfilled.drain().collect();
        for a in unfilled {
            self.fill(a, st).await;
        }
    }

    async fn fill(&self, a: Audience, st: &mut State) {
        let filled = tokio::time::timeout(
            self.probe.max(Duration::from_secs(1)),
            fill_gaps(&self.weak, &self.router, &[a], &mut st.seen, &st.floors),
        )
        .await;
        if !matches!(filled, Ok(Ok(()))) {
            tracing::warn!(%a, "gap fill failed; will retry");
            st.unfilled.insert(a);
        }
    }

    async fn on_push(
        &self,
        p: Push,
        pool: &Arc<Pool>,
        done: &mpsc::UnboundedSender<Done>,
        st: &mut State,
    ) {
        let mut data = p.info.data.into_iter();
        match p.info.kind {
            PushKind::SMessage => {
                let Some(audience) = data
                    .next()
                    .and_then(text)
                    .and_then(|c| parse_audience(&self.names, &c))
                else {
                    return;
                };
                if !st.subscribed.contains_key(&audience) {
                    return;
                }
                let Some(payload) = data.next().and_then(text) else {
                    return;
                };
                let Some((id, body)) = payload.split_once(' ') else {
                    return;
                };
                if let Some(d) = decode(audience, id, body) {
                    dispatch(&self.router, d, &mut st.seen);
                }
            }
            PushKind::SUnsubscribe => {
                // Not asked for (this node removes an audience before unsubscribing it): the
                // server dropped it because its slot moved to another shard.
                let Some(a) = data
                    .next()
                    .and_then(text)
                    .and_then(|c| parse_audience(&self.names, &c))
                else {
                    return;
                };
                if st
                    .subscribed
                    .get(&a)
                    .is_some_and(|(addr, id)| *addr == p.addr && *id == p.id)
                {
                    tracing::info!(%a, "redis cluster dropped a shard channel; subscribing again");
                    st.subscribed.remove(&a);
                    st.pending.insert(a);
                    pool.slots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                    self.retry(pool, done, st).await;
                }
            }
            PushKind::Disconnection => {
                self.lost(&p.addr, p.id, pool, st).await;
                self.retry(pool, done, st).await;
            }
            _ => {}
        }
    }
}

/// `[[start, end, [host, port, ...], replicas...], ...]` → (start, end, `host:port` of the master).
fn parse_slots(v: Value) -> Option<Vec<(u16, u16, Addr)>> {
    let Value::Array(ranges) = v else { return None };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let mut out = Vec::new();
    for r in ranges {
        let Value::Array(parts) = r else { return None };
        let (Some(lo), Some(hi)) = (parts.first().and_then(int), parts.get(1).and_then(int)) else {
            return None;
        };
        let Some(Value::Array(master)) = parts.get(2) else {
            return None;
        };
        let host = master.first().cloned().and_then(text)?;
        let port = master.get(1).and_then(int)?;
        out.push((lo, hi, format!("{host}:{port}")));
    }
    Some(out)
}

/// The cluster slot of a key or shard channel: CRC16 (XMODEM) of its hash tag, mod 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The audience of one of this backplane's channels (`{prefix}:{audience}:live`).
fn parse_audience(names: &RedisKeys, channel: &str) -> Option<Audience> {
    let inner = channel
        .strip_prefix(names.prefix.as_str())?
        .strip_prefix(":{")?
        .strip_suffix("}:live")?;
    Audience::parse(inner).ok()
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Option<Vec<(String, String)>> {
        ClusterTarget::parse(url, &ClientTls::default())
            .ok()?
            .map(|t| {
                t.nodes
                    .iter()
                    .map(|n| {
                        (
                            n.addr().to_string(),
                            n.redis_settings().password().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
    }

    #[test]
    fn computes_slots_like_redis() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed (CLUSTER KEYSLOT says 8363).
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        let names = RedisKeys {
            prefix: "herald".into(),
        };
        let a = Audience::Key(herald_domain::KeyId::new(42).unwrap());
        assert_eq!(
            key_slot(names.channel(a).as_bytes()),
            key_slot(b"herald:{vkey:42}:stream")
        );
        assert_eq!(parse_audience(&names, "herald:{vkey:42}:live"), Some(a));
        assert_eq!(parse_audience(&names, "other:{vkey:42}:live"), None);
        assert_eq!(
            parse_audience(&names, "herald:{admin}:live"),
            Some(Audience::Admin)
        );
    }

    #[test]
    fn detects_cluster_urls() {
        assert!(matches!(
            ClusterTarget::parse("redis://127.0.0.1:6379/", &ClientTls::default()),
            Ok(None)
        ));
        let got = hosts("redis+cluster://:secret@10.0.0.1:7001,10.0.0.2:7002/").unwrap();
        assert_eq!(
            got,
            [
                ("10.0.0.1:7001".to_owned(), "secret".to_owned()),
                ("10.0.0.2:7002".to_owned(), "secret".to_owned())
            ]
        );
        let got = hosts("redis://127.0.0.1:7001, redis://127.0.0.1:7002").unwrap();
        assert_eq!(got.len(), 2);
        // TLS: every node is a TLS address.
        let t = ClusterTarget::parse("rediss+cluster://a:7001,b:7002", &ClientTls::default())
            .unwrap()
            .unwrap();
        assert!(t.nodes.iter().all(crate::tls::is_tls));
        assert!(ClusterTarget::parse("redis+cluster://", &ClientTls::default()).is_err());
        assert!(ClusterTarget::parse("redis+cluster://,", &ClientTls::default()).is_err());
        assert!(ClusterTarget::parse("redis://a:1,not a url", &ClientTls::default()).is_err());
    }
}
