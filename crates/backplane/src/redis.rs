//! Redis backplane (DESIGN §7). Per audience, hash-tagged so one script touches one slot:
//! `{prefix}:{vkey:42}:stream` (history), `{prefix}:{vkey:42}:seen` (dedupe window) and the
//! channel `{prefix}:{vkey:42}:live`. Publishing is one script per audience that dedupes,
//! XADDs and PUBLISHes atomically; the audiences of one event go out concurrently over one
//! multiplexed connection (one round trip).
//!
//! Each node has one subscriber connection, subscribed only to audiences with local listeners.
//! When it drops or stops answering pings, the node reconnects, resubscribes, and replays
//! from the streams whatever each audience missed, so local listeners lose nothing.
//!
//! A `redis+cluster://` URL (or a comma-separated list of node URLs) selects Redis Cluster
//! (see `cluster.rs`): the same script runs on the audience's shard with SPUBLISH, and the
//! subscriber uses sharded pub/sub (SSUBSCRIBE) on the shard owning each channel.
use crate::cluster::{ClusterSubscriber, ClusterTarget};
use crate::router::{Router, Subscription};
use crate::{Backplane, BackplaneError, Delivery, History, Mailbox, Position};
use async_trait::async_trait;
use futures_util::StreamExt;
use herald_domain::catalog::TaskState;
use herald_domain::{Audience, OutboundEvent};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    /// Approximate cap of each history stream (`XADD MAXLEN ~`).
    pub max_len: usize,
    /// Idle expiry of history streams.
    pub ttl: Duration,
    /// How often the subscriber connection is probed with PING.
    pub probe_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "herald".into(),
            max_len: 1000,
            ttl: Duration::from_secs(15 * 60),
            probe_interval: Duration::from_secs(5),
        }
    }

    /// The publish script's three shared ARGV: the stream cap, the idle expiry in ms and how
    /// long the `last` key is kept in ms.
    pub fn publish_script_limits(&self) -> (usize, u64, u64) {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        // Long enough that a client coming back a day later still learns it missed events.
        let last_ttl_ms = ttl_ms.max(24 * 3600 * 1000);
        (self.max_len, ttl_ms, last_ttl_ms)
    }
}

/// Appends a batch of (audience, event) entries in one call. Per entry, KEYS: stream, seen,
/// last; ARGV: channel, event id, data, after three shared ARGV: maxlen, ttl ms, last ttl ms.
/// An entry whose event id the audience has already published is skipped. Returns how many
/// entries were appended.
///
/// Each entry records the id of the one before it in its stream (`p`), so a reader can tell
/// whether entries between its cursor and the oldest entry still held were trimmed, expired or
/// wiped. Within a batch the previous id is carried in a Lua table, and each audience's `last`,
/// trim and expiry are written once at the end: an audience that gets many entries per batch
/// (admin, global) pays for them once.
///
/// Every `redis.call` costs about as much again in the script as the command itself, so:
/// - the dedupe window takes one call per entry: `ZADD NX` both checks and records the id,
///   scored by the server's clock (ms × 1024 + place in the batch, exact in a double) so that
///   trimming by rank drops the oldest; the trim keeps the newest `keep` by a negative rank,
///   without `ZCARD`;
/// - the idle expiry of the stream and the dedupe window is set on an audience's first entry
///   in each time slice of `ttl / 4` (the slice of its previous entry is that entry's id), to
///   `ttl + ttl / 4`: each key still lives at least `ttl` after the audience's last entry, and
///   an audience with one entry per batch (every key's) skips two calls per entry.
const PUBLISH_SCRIPT: &str = r#"
local maxlen, ttl, last_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local keep = tonumber(maxlen) * 2
local slice = math.max(1, math.floor(ttl / 4))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local base = now_ms * 1024
local prev, touched, refresh = {}, {}, {}
local added = 0
for j = 0, #KEYS / 3 - 1 do
  local stream, seen, last = KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3]
  local eid, data = ARGV[3 * j + 5], ARGV[3 * j + 6]
  if redis.call('ZADD', seen, 'NX', base + j % 1024, eid) == 1 then
    local p = prev[last]
    if p == nil then
      p = redis.call('GET', last) or ''
      touched[#touched + 1] = j
      local p_ms = tonumber(string.match(p, '^(%d+)'))
      refresh[last] = p_ms == nil or math.floor(p_ms / slice) ~= math.floor(now_ms / slice)
    end
    local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', data, 'p', p)
    prev[last] = id
    redis.call('PUBLISH', ARGV[3 * j + 4], id .. ' ' .. data)
    added = added + 1
  end
end
for _, j in ipairs(touched) do
  local stream, seen, last = KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3]
  redis.call('SET', last, prev[last], 'PX', last_ttl)
  redis.call('ZREMRANGEBYRANK', seen, 0, -keep - 1)
  if refresh[last] then
    redis.call('PEXPIRE', stream, ttl + slice)
    redis.call('PEXPIRE', seen, ttl + slice)
  end
end
return added
"#;

/// The publish script for Redis Cluster: the channel shares the audience's hash tag, so the
/// sharded publish stays on the script's slot. Each call carries one audience's entry.
fn cluster_publish_script() -> String {
    PUBLISH_SCRIPT.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
}

/// The publish script with one change: the channel message is the entry's data alone, without
/// the stream id in front. Herald does not use it; the load generator feeds the floor through
/// it, so that the floor's events cost Redis what Herald's do (dedupe set, stream, last id) and
/// the two nodes can be compared alone. Same KEYS and ARGV as Herald's script.
pub fn history_script_for_plain_subscribers() -> String {
    PUBLISH_SCRIPT.replace("id .. ' ' .. data)", "data)")
}

/// Events handed to one batched publish call at most (each with its audiences' entries).
const PUBLISH_BATCH: usize = 128;
/// Batched publish calls in flight at once. Two: a publish that arrives while a batch runs goes
/// out without waiting for it (the latency scenario's p99 fell from 2.5–4.3 ms to 1.5–2.0 ms
/// against one worker), and a key's events are never in two batches at once because the
/// consumer has one message per key in flight.
const PUBLISH_WORKERS: usize = 2;

/// One audience's copy of an event, as the publish script takes it.
#[derive(Clone)]
struct Entry {
    stream: String,
    seen: String,
    last: String,
    channel: String,
    event_id: String,
    data: Arc<str>,
}

type PublishBatcher = herald_coalesce::Coalescer<Vec<Entry>, (), BackplaneError>;

/// KEYS: task. ARGV: state JSON, terminal (1/0), ttl ms. Keeps a terminal state against a
/// late non-terminal one.
const TASK_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[2] == '0' then
  local ok, old = pcall(cjson.decode, cur)
  if ok and (old.status == 'completed' or old.status == 'failed' or old.status == 'cancelled') then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

pub(crate) struct Names {
    pub(crate) prefix: String,
}

impl Names {
    fn stream(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:stream", self.prefix)
    }
    fn seen(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:seen", self.prefix)
    }
    fn task(&self, task_id: &str) -> String {
        format!("{}:task:{task_id}", self.prefix)
    }
    /// The last id written to the stream; outlives the stream so expiry is detectable.
    fn last(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:last", self.prefix)
    }
    pub(crate) fn channel(&self, a: Audience) -> String {
        format!("{}:{{{a}}}:live", self.prefix)
    }
}

pub(crate) enum Command {
    Subscribe(Audience, oneshot::Sender<Result<(), BackplaneError>>),
    Vacated(Audience),
}

/// Where the backplane's Redis is: one server, or a cluster.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(ClusterTarget),
}

/// A command connection to either kind of target. Both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The command connection with a health mark: a timeout or a lost connection marks it broken
/// and the next `conn()` builds a new one. Without this, a silently dead connection (no FIN, no
/// RST) would keep failing every publish and history read: the connection manager only
/// reconnects when the socket reports an error.
#[derive(Clone)]
struct Checked {
    conn: Conn,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

fn gone(e: &redis::RedisError) -> bool {
    e.is_timeout() || e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
}

/// Marks `broken` when the command behind `fut` fails for want of a working connection.
fn watched<'a, T: Send + 'a>(
    broken: Arc<std::sync::atomic::AtomicBool>,
    fut: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        let r = fut.await;
        if let Err(e) = &r
            && gone(e)
        {
            broken.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        r
    })
}

impl ConnectionLike for Checked {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        watched(self.broken.clone(), self.conn.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        watched(
            self.broken.clone(),
            self.conn.req_packed_commands(cmd, offset, count),
        )
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

pub struct RedisBackplane {
    target: Target,
    config: RedisConfig,
    names: Arc<Names>,
    script: Script,
    task_script: Script,
    /// Single server: concurrent publishes share batched script calls. A cluster spreads an
    /// event's audiences over shards, so there each audience is its own call.
    batcher: Option<PublishBatcher>,
    conn: Mutex<Option<Checked>>,
    router: Arc<Router>,
    commands: mpsc::UnboundedSender<Command>,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unavailable(e.to_string())
}

impl RedisBackplane {
    /// Validates the URL and starts the subscriber task. Connections are made lazily and
    /// re-made after failures, so this succeeds while Redis is down. A `redis+cluster://` URL
    /// or a comma-separated list of node URLs selects Redis Cluster.
    pub fn connect(config: RedisConfig) -> Result<Arc<Self>, BackplaneError> {
        let target = match ClusterTarget::parse(&config.url)? {
            Some(cluster) => Target::Cluster(cluster),
            None => Target::Single(
                redis::Client::open(config.url.as_str())
                    .map_err(|e| unavailable(format!("invalid Redis URL: {e}")))?,
            ),
        };
        let names = Arc::new(Names {
            prefix: config.prefix.clone(),
        });
        let router = Router::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (vac_tx, mut vac_rx) = mpsc::unbounded_channel();
        router.on_vacated(vac_tx);
        let fwd = tx.clone();
        tokio::spawn(async move {
            while let Some(a) = vac_rx.recv().await {
                if fwd.send(Command::Vacated(a)).is_err() {
                    break;
                }
            }
        });
        let script = match target {
            Target::Single(_) => Script::new(PUBLISH_SCRIPT),
            Target::Cluster(_) => Script::new(&cluster_publish_script()),
        };
        let batched = matches!(target, Target::Single(_));
        let bp = Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let me = me.clone();
            Self {
                target: target.clone(),
                config: config.clone(),
                names: names.clone(),
                script,
                task_script: Script::new(TASK_SCRIPT),
                batcher: batched.then(|| {
                    PublishBatcher::spawn(PUBLISH_WORKERS, PUBLISH_BATCH, move |events| {
                        let me = me.clone();
                        async move {
                            let bp = me
                                .upgrade()
                                .ok_or_else(|| unavailable("backplane dropped"))?;
                            bp.run_publish_script(events.iter().flatten()).await?;
                            Ok(vec![(); events.len()])
                        }
                    })
                }),
                conn: Mutex::new(None),
                router: router.clone(),
                commands: tx,
            }
        });
        match target {
            Target::Single(client) => {
                let subscriber = Subscriber {
                    client,
                    names,
                    router,
                    probe: config.probe_interval,
                    weak: Arc::downgrade(&bp),
                };
                tokio::spawn(subscriber.run(rx));
            }
            Target::Cluster(cluster) => {
                let subscriber = ClusterSubscriber::new(
                    cluster,
                    names,
                    router,
                    config.probe_interval,
                    Arc::downgrade(&bp),
                );
                tokio::spawn(subscriber.run(rx));
            }
        }
        Ok(bp)
    }

    /// True when the backplane talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    async fn conn(&self) -> Result<Checked, BackplaneError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(c.clone());
            }
            tracing::warn!("redis command connection timed out or was lost; reconnecting");
            herald_telemetry::metrics().reconnects.with("redis").inc();
        }
        let c = match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2);
                Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), cfg)
                        .await
                        .map_err(unavailable)?,
                )
            }
            Target::Cluster(cluster) => Conn::Cluster(cluster.command_connection().await?),
        };
        let c = Checked {
            conn: c,
            broken: Arc::default(),
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One call of the publish script on `entries` (which must share a slot on a cluster).
    async fn run_publish_script(
        &self,
        entries: impl Iterator<Item = &Entry>,
    ) -> Result<(), BackplaneError> {
        let mut conn = self.conn().await?;
        let (max_len, ttl_ms, last_ttl_ms) = self.config.publish_script_limits();
        let mut inv = self.script.prepare_invoke();
        inv.arg(max_len).arg(ttl_ms).arg(last_ttl_ms);
        for e in entries {
            inv.key(&e.stream)
                .key(&e.seen)
                .key(&e.last)
                .arg(&e.channel)
                .arg(&e.event_id)
                .arg(&*e.data);
        }
        inv.invoke_async::<Value>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// `CLUSTER SLOTS` from any node (cluster only).
    pub(crate) async fn cluster_slots(&self) -> Result<Value, BackplaneError> {
        let mut conn = self.conn().await?;
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// The newest position of the audience's stream (`ZERO` when it is empty).
    pub(crate) async fn last_position(
        &self,
        audience: Audience,
    ) -> Result<Position, BackplaneError> {
        let mut conn = self.conn().await?;
        let v: Value = redis::cmd("XREVRANGE")
            .arg(self.names.stream(audience))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match v {
            Value::Array(mut items) if !items.is_empty() => {
                parse_entry(audience, items.remove(0)).map_or(Position::ZERO, |(d, _)| d.position)
            }
            _ => Position::ZERO,
        })
    }

    pub(crate) async fn read_history(
        &self,
        audience: Audience,
        after: Option<Position>,
        limit: usize,
    ) -> Result<History, BackplaneError> {
        let mut conn = self.conn().await?;
        let stream = self.names.stream(audience);
        let start = after.map_or_else(|| "-".to_owned(), |p| format!("({p}"));
        let entries: Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut events = Vec::new();
        let mut first_prev = None;
        if let Value::Array(items) = entries {
            for item in items {
                if let Some((d, prev)) = parse_entry(audience, item) {
                    if events.is_empty() {
                        first_prev = Some(prev);
                    }
                    events.push(d);
                }
            }
        }
        let gap = match (after, first_prev) {
            (None, _) => false,
            // Contiguous only if the first entry after the cursor was written right after it.
            (Some(a), Some(prev)) => prev != Some(a),
            // Nothing after the cursor: a gap if something was written after it and is gone, or
            // if the record of the newest entry is gone too (Redis wiped, or idle beyond its
            // 24 h TTL) while the cursor names a real entry: nothing vouches for what followed.
            (Some(a), None) => {
                let last: Option<String> = conn
                    .get(self.names.last(audience))
                    .await
                    .map_err(unavailable)?;
                match last.and_then(|l| l.parse::<Position>().ok()) {
                    Some(l) => l > a,
                    None => a > Position::ZERO,
                }
            }
        };
        Ok(History { events, gap })
    }
}

/// `[id, [field, value, ...]]` → the delivery and the id of the entry written before it.
fn parse_entry(audience: Audience, item: Value) -> Option<(Delivery, Option<Position>)> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = text(parts.pop()?)?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let field = |name: &str| {
        fields.chunks(2).find_map(|kv| match kv {
            [k, v] if text(k.clone()).as_deref() == Some(name) => text(v.clone()),
            _ => None,
        })
    };
    let prev = field("p").and_then(|p| p.parse().ok());
    Some((decode(audience, &id, &field("e")?)?, prev))
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn decode(audience: Audience, id: &str, data: &str) -> Option<Delivery> {
    let position = id.parse().ok()?;
    match serde_json::from_str::<OutboundEvent>(data) {
        Ok(ev) => Some(Delivery {
            audience,
            position,
            event: Arc::new(ev),
        }),
        Err(e) => {
            tracing::warn!(%audience, %id, error = %e, "skipping undecodable backplane entry");
            None
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        audiences: &[Audience],
        event: &OutboundEvent,
    ) -> Result<(), BackplaneError> {
        let data: Arc<str> = serde_json::to_string(event).map_err(unavailable)?.into();
        let entries: Vec<Entry> = audiences
            .iter()
            .map(|&a| Entry {
                stream: self.names.stream(a),
                seen: self.names.seen(a),
                last: self.names.last(a),
                channel: self.names.channel(a),
                event_id: event.event_id.as_str().to_owned(),
                data: data.clone(),
            })
            .collect();
        match &self.batcher {
            Some(batcher) => batcher
                .call(entries)
                .await
                .map_err(|_| unavailable("publish batch was dropped"))?,
            None => {
                // Concurrent invocations are pipelined on the cluster connection.
                let calls = entries
                    .iter()
                    .map(|one| self.run_publish_script(std::iter::once(one)));
                for r in futures_util::future::join_all(calls).await {
                    r?;
                }
                Ok(())
            }
        }
    }

    async fn subscribe(
        &self,
        audience: Audience,
        mailbox: Mailbox,
    ) -> Result<Subscription, BackplaneError> {
        let sub = self.router.add(audience, mailbox);
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(audience, tx))
            .map_err(|_| unavailable("subscriber stopped"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(unavailable("subscriber stopped")),
            Err(_) => Err(unavailable("timed out subscribing")),
        }
    }

    async fn history(
        &self,
        audience: Audience,
        after: Option<Position>,
        limit: usize,
    ) -> Result<History, BackplaneError> {
        self.read_history(audience, after, limit).await
    }

    async fn position(&self, audience: Audience) -> Result<Position, BackplaneError> {
        self.last_position(audience).await
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        let mut conn = self.conn().await?;
        let _: String = conn.ping().await.map_err(unavailable)?;
        Ok(())
    }

    async fn record_task(&self, state: &TaskState) -> Result<(), BackplaneError> {
        let mut conn = self.conn().await?;
        let json = serde_json::to_string(state).map_err(unavailable)?;
        let ttl = u64::try_from(crate::TASK_TTL.as_millis()).unwrap_or(u64::MAX);
        let _: i64 = self
            .task_script
            .key(self.names.task(&state.task_id))
            .arg(json)
            .arg(if state.is_terminal() { "1" } else { "0" })
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskState>, BackplaneError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn
            .get(self.names.task(task_id))
            .await
            .map_err(unavailable)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}

/// Owns the node's subscriber connection.
struct Subscriber {
    client: redis::Client,
    names: Arc<Names>,
    router: Arc<Router>,
    probe: Duration,
    weak: std::sync::Weak<RedisBackplane>,
}

/// Per audience: the last position handed to local listeners.
pub(crate) type Seen = HashMap<Audience, Position>;

impl Subscriber {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut seen: Seen = HashMap::new();
        // Per audience: the stream's newest position when the node subscribed. Gap filling
        // starts there for audiences that have delivered nothing yet.
        let mut floors: Seen = HashMap::new();
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let pubsub =
                tokio::time::timeout(Duration::from_secs(5), self.client.get_async_pubsub()).await;
            let (mut sink, mut stream) = match pubsub {
                Ok(Ok(p)) => p.split(),
                other => {
                    let err = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".to_owned(),
                    };
                    tracing::warn!(error = %err, "redis subscriber connection failed; retrying");
                    // Fail subscribe requests that arrive while Redis is down rather than hang them.
                    let deadline = tokio::time::sleep(backoff);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            cmd = commands.recv() => match cmd {
                                None => return,
                                Some(Command::Subscribe(_, ack)) => { let _ = ack.send(Err(unavailable(&err))); }
                                Some(Command::Vacated(a)) => { seen.remove(&a); }
                            }
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut channels: HashMap<String, Audience> = HashMap::new();
            let audiences = self.router.audiences();
            let mut ok = true;
            for a in &audiences {
                if sink.subscribe(self.names.channel(*a)).await.is_err() {
                    ok = false;
                    break;
                }
                channels.insert(self.names.channel(*a), *a);
            }
            if !ok {
                continue;
            }
            if !first {
                herald_telemetry::metrics().reconnects.with("redis").inc();
                tracing::info!(
                    audiences = audiences.len(),
                    "redis subscriber reconnected; filling gaps from history"
                );
                if self
                    .fill_gaps(&audiences, &mut seen, &floors)
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            first = false;
            // Audiences subscribed here for the first time (listeners that arrived while this
            // connection was being made) need a floor too, or a later drop would lose their events.
            if let Some(bp) = self.weak.upgrade() {
                for a in &audiences {
                    if !seen.contains_key(a)
                        && !floors.contains_key(a)
                        && let Ok(Ok(p)) =
                            tokio::time::timeout(self.probe, bp.last_position(*a)).await
                    {
                        floors.insert(*a, p);
                    }
                }
            }
            let mut probe = tokio::time::interval(self.probe);
            probe.tick().await;
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else {
                            tracing::warn!("redis subscriber connection closed");
                            break;
                        };
                        let Some(&audience) = channels.get(msg.get_channel_name()) else { continue };
                        let payload: String = match msg.get_payload() { Ok(p) => p, Err(_) => continue };
                        let Some((id, data)) = payload.split_once(' ') else { continue };
                        if let Some(d) = decode(audience, id, data) {
                            self.dispatch(d, &mut seen);
                        }
                    }
                    cmd = commands.recv() => match cmd {
                        None => return,
                        Some(Command::Subscribe(a, ack)) => {
                            let ch = self.names.channel(a);
                            if channels.contains_key(&ch) {
                                let _ = ack.send(Ok(()));
                                continue;
                            }
                            match sink.subscribe(&ch).await {
                                Ok(()) => {
                                    channels.insert(ch, a);
                                    if let Some(bp) = self.weak.upgrade()
                                        && let Ok(Ok(p)) = tokio::time::timeout(self.probe, bp.last_position(a)).await
                                    {
                                        floors.insert(a, p);
                                    }
                                    let _ = ack.send(Ok(()));
                                }
                                Err(e) => { let _ = ack.send(Err(unavailable(&e))); break; }
                            }
                        }
                        Some(Command::Vacated(a)) => {
                            if self.router.has_listeners(&a) { continue; }
                            seen.remove(&a);
                            floors.remove(&a);
                            let ch = self.names.channel(a);
                            if channels.remove(&ch).is_some() && sink.unsubscribe(&ch).await.is_err() {
                                break;
                            }
                        }
                    },
                    _ = probe.tick() => {
                        let alive = tokio::time::timeout(self.probe, ping(&mut sink)).await;
                        if !matches!(alive, Ok(Ok(()))) {
                            tracing::warn!("redis subscriber connection stopped answering; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&self, d: Delivery, seen: &mut Seen) {
        dispatch(&self.router, d, seen);
    }

    async fn fill_gaps(
        &self,
        audiences: &[Audience],
        seen: &mut Seen,
        floors: &Seen,
    ) -> Result<(), BackplaneError> {
        fill_gaps(&self.weak, &self.router, audiences, seen, floors).await
    }
}

/// Hands a live or replayed delivery on, once, in stream order.
pub(crate) fn dispatch(router: &Router, d: Delivery, seen: &mut Seen) {
    if seen.get(&d.audience).is_some_and(|p| d.position <= *p) {
        return;
    }
    seen.insert(d.audience, d.position);
    router.dispatch(&d);
}

/// Replays from the streams what each audience missed since the last position handed on (or,
/// for an audience that has delivered nothing yet, since its floor).
pub(crate) async fn fill_gaps(
    weak: &std::sync::Weak<RedisBackplane>,
    router: &Router,
    audiences: &[Audience],
    seen: &mut Seen,
    floors: &Seen,
) -> Result<(), BackplaneError> {
    let Some(bp) = weak.upgrade() else {
        return Ok(());
    };
    for &a in audiences {
        let Some(mut after) = seen.get(&a).or(floors.get(&a)).copied() else {
            continue;
        };
        loop {
            let page = bp.read_history(a, Some(after), 500).await?;
            let n = page.events.len();
            for d in page.events {
                after = d.position;
                dispatch(router, d, seen);
            }
            if n < 500 {
                break;
            }
        }
    }
    Ok(())
}

async fn ping(sink: &mut PubSubSink) -> redis::RedisResult<()> {
    let _: Value = sink.ping().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_for_plain_subscribers_differs_only_in_the_message() {
        let plain = history_script_for_plain_subscribers();
        assert_ne!(
            plain, PUBLISH_SCRIPT,
            "the replaced text is no longer in the script"
        );
        assert_eq!(
            plain.replace("data)", ""),
            PUBLISH_SCRIPT.replace("id .. ' ' .. data)", "")
        );
    }

    #[test]
    fn names_are_hash_tagged_per_audience() {
        let n = Names {
            prefix: "herald".into(),
        };
        let a = Audience::Key(herald_domain::KeyId::new(42).unwrap());
        assert_eq!(n.stream(a), "herald:{vkey:42}:stream");
        assert_eq!(n.channel(a), "herald:{vkey:42}:live");
        assert_eq!(n.seen(a), "herald:{vkey:42}:seen");
    }
}
