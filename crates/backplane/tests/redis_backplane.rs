//! The Redis backplane against the real Redis on 127.0.0.1:6379. Each test has its own prefix.
#![allow(clippy::unwrap_used)]
use herald_backplane::{
    Backplane, Mailbox, MailboxReceiver, Received, RedisBackplane, RedisConfig,
};
use herald_domain::{Audience, EventId, KeyId, OutboundEvent};
use std::sync::Arc;
use std::time::Duration;

/// The test command's run tag (`HERALD_TEST_RUN`, docs/testing.md) goes into every name this
/// test creates, so `scripts/test` can count and remove what its run left behind.
fn run_tag() -> String {
    std::env::var("HERALD_TEST_RUN")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect()
}

const URL: &str = "redis://127.0.0.1:6379/";

fn config(max_len: usize) -> RedisConfig {
    let mut c = RedisConfig::new(URL);
    c.prefix = format!(
        "herald-test-{}{:012x}",
        run_tag(),
        rand::random::<u64>() >> 16
    );
    c.max_len = max_len;
    c.probe_interval = Duration::from_millis(500);
    c
}

fn event(id: &str) -> OutboundEvent {
    OutboundEvent {
        event_id: EventId::parse(id).unwrap(),
        name: herald_domain::Outbound::SpendUpdate,
        key_id: None,
        timestamp: chrono::Utc::now(),
        traceparent: None,
        payload: serde_json::value::RawValue::from_string(format!(
            r#"{{"id":"{id}","amount":12.50}}"#
        ))
        .unwrap(),
        task: None,
        binary: Default::default(),
    }
}

async fn next(rx: &mut MailboxReceiver) -> String {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Received::Delivery(d)) => d.event.event_id.to_string(),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A Redis user of its own for one node under test, so the test can cut exactly that node off:
/// `cut` disables the user and kills its connections, so the node can neither keep nor make a
/// connection (a reconnect fails authentication) until `restore`. Other tests' connections are
/// untouched. The user is deleted when dropped.
struct CutOff {
    user: String,
    admin: redis::aio::MultiplexedConnection,
}

impl CutOff {
    async fn new() -> Self {
        let user = format!(
            "herald-test-{}{:012x}",
            run_tag(),
            rand::random::<u64>() >> 16
        );
        let mut admin = redis().await;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .unwrap();
        CutOff { user, admin }
    }

    /// `cfg` connecting as this user.
    fn config(&self, mut cfg: RedisConfig) -> RedisConfig {
        cfg.url = format!("redis://{}:pw@127.0.0.1:6379/", self.user);
        cfg
    }

    async fn cut(&mut self) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.user)
            .arg("off")
            .query_async(&mut self.admin)
            .await
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.user)
            .query_async(&mut self.admin)
            .await
            .unwrap();
        assert!(killed >= 1, "the node had no connection to cut");
    }

    async fn restore(&mut self) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.user)
            .arg("on")
            .query_async(&mut self.admin)
            .await
            .unwrap();
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        if let Ok(mut c) = redis::Client::open(URL).and_then(|c| c.get_connection()) {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.user)
                .query(&mut c);
        }
    }
}

async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let v: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    v.1
}

#[tokio::test]
async fn publishes_once_per_event_id_with_exact_payload_and_history() {
    let cfg = config(1000);
    let bp = RedisBackplane::connect(cfg.clone()).unwrap();
    let key = Audience::Key(KeyId::new(42).unwrap());
    let (mb, mut rx) = Mailbox::new(1 << 20);
    let _sub = bp.subscribe(key, mb).await.unwrap();
    for id in ["a", "b", "a", "c"] {
        bp.publish(&[key, Audience::Admin], &event(id))
            .await
            .unwrap();
    }
    assert_eq!(next(&mut rx).await, "a");
    assert_eq!(next(&mut rx).await, "b");
    assert_eq!(next(&mut rx).await, "c");
    let h = bp.history(key, None, 100).await.unwrap();
    let ids: Vec<_> = h
        .events
        .iter()
        .map(|d| d.event.event_id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b", "c"], "the repeat of a was not appended");
    assert!(
        h.events[0].event.payload.get().contains("12.50"),
        "digits survive: {}",
        h.events[0].event.payload.get()
    );
    let after_a = bp
        .history(key, Some(h.events[0].position), 100)
        .await
        .unwrap();
    assert_eq!(after_a.events.len(), 2);
    assert!(!after_a.gap);
    assert_eq!(
        bp.history(Audience::Admin, None, 100)
            .await
            .unwrap()
            .events
            .len(),
        3,
        "admin stream too"
    );
    // The stream key is hash-tagged per audience and expires when idle.
    let mut c = redis().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:{{vkey:42}}:stream", cfg.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    // Idle expiry: HERALD_HISTORY_TTL plus at most a quarter (see the publish script).
    assert!(ttl > 0 && ttl <= 15 * 60 * 1000 * 5 / 4, "ttl {ttl}");
}

/// The dedupe window holds the newest `2 × HERALD_HISTORY_MAXLEN` event ids of an audience:
/// a repeat of one of them is dropped, an id older than that is forgotten (the set stays bounded),
/// whether the ids came one per call or many in one batched call.
#[tokio::test]
async fn the_dedupe_window_keeps_the_newest_ids_and_stays_bounded() {
    let cfg = config(2);
    let bp = RedisBackplane::connect(cfg.clone()).unwrap();
    let key = Audience::Key(KeyId::new(7).unwrap());
    for i in 0..6 {
        bp.publish(&[key], &event(&format!("e{i}"))).await.unwrap();
    }
    // Six more in one batch: concurrent publishes share a script call.
    let batch: Vec<_> = (6..12).map(|i| event(&format!("e{i}"))).collect();
    let audiences = [key];
    let calls = batch.iter().map(|e| bp.publish(&audiences, e));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    let mut c = redis().await;
    let seen = format!("{}:{{vkey:7}}:seen", cfg.prefix);
    let held: Vec<String> = redis::cmd("ZRANGE")
        .arg(&seen)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(held.len(), 4, "bounded to 2 × maxlen: {held:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&seen)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0, "the window expires when idle: {ttl}");
    let newest = held.last().unwrap().clone();
    let forgotten = (0..12)
        .map(|i| format!("e{i}"))
        .find(|id| !held.contains(id))
        .unwrap();
    let before = bp.history(key, None, 100).await.unwrap().events.len();
    let repeat = bp.publish(&[key], &event(&newest)).await.unwrap();
    assert!(repeat.is_repeat(), "the repeat is reported: {repeat:?}");
    let after_repeat = bp.history(key, None, 100).await.unwrap().events.len();
    assert_eq!(
        after_repeat, before,
        "a repeat of {newest} (still in the window) was dropped"
    );
    let again = bp.publish(&[key], &event(&forgotten)).await.unwrap();
    assert_eq!(
        (again.appended, again.repeated),
        (1, 0),
        "{forgotten} is new again"
    );
    let h = bp.history(key, None, 100).await.unwrap();
    assert_eq!(
        h.events.last().unwrap().event.event_id.to_string(),
        forgotten,
        "an id older than the window is appended again"
    );
    // The newest ids are the ones kept: e11 was published last and is held.
    assert!(held.contains(&"e11".to_owned()), "{held:?}");
    assert!(!held.contains(&"e0".to_owned()), "{held:?}");
}

/// The history's idle expiry is set on an audience's first entry in each quarter of the TTL,
/// to 1.25 × the TTL: a stream always outlives its last entry by the TTL.
#[tokio::test]
async fn the_idle_expiry_is_renewed_once_per_quarter_of_the_ttl() {
    let mut cfg = config(100);
    cfg.ttl = Duration::from_millis(2000);
    let bp = RedisBackplane::connect(cfg.clone()).unwrap();
    let key = Audience::Key(KeyId::new(9).unwrap());
    let stream = format!("{}:{{vkey:9}}:stream", cfg.prefix);
    let mut c = redis().await;
    let mut pttl = async |name: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut c)
            .await
            .unwrap()
    };
    bp.publish(&[key], &event("a")).await.unwrap();
    let first = pttl(&stream).await;
    assert!(
        first > 2000 && first <= 2500,
        "set on the first entry: {first}"
    );
    // Past the quarter (500 ms) in which "a" was appended, the next entry renews it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    bp.publish(&[key], &event("b")).await.unwrap();
    let renewed = pttl(&stream).await;
    assert!(
        renewed > 2000,
        "renewed in a new quarter (else ~1900 ms): {renewed}"
    );
    let seen = pttl(&format!("{}:{{vkey:9}}:seen", cfg.prefix)).await;
    assert!(seen > 2000, "the dedupe window with it: {seen}");
}

/// Concurrent publishes share batched script calls: every event still lands once per audience,
/// in a chain with no gap, and a repeat inside the same batch is still dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_batched_without_loss_repeat_or_gap() {
    let bp = RedisBackplane::connect(config(10_000)).unwrap();
    let keys: Vec<Audience> = (1..=20)
        .map(|k| Audience::Key(KeyId::new(k).unwrap()))
        .collect();
    let (mb, mut rx) = Mailbox::new(1 << 24);
    let _sub = bp.subscribe(Audience::Admin, mb).await.unwrap();
    let mut tasks = Vec::new();
    // Each event is published twice at once; 20 keys, 50 events each.
    for i in 0..1000u32 {
        for _ in 0..2 {
            let bp = bp.clone();
            let key = keys[(i % 20) as usize];
            tasks.push(tokio::spawn(async move {
                bp.publish(&[key, Audience::Admin], &event(&format!("e{i}")))
                    .await
            }));
        }
    }
    // Of each pair, one call appended to both audiences and the other reports a repeat, even
    // when the two shared a batched script call.
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    for (i, pair) in outcomes.chunks(2).enumerate() {
        let mut got: Vec<_> = pair.iter().map(|p| (p.appended, p.repeated)).collect();
        got.sort();
        assert_eq!(got, [(0, 2), (2, 0)], "event e{i}");
    }
    let admin = bp.history(Audience::Admin, None, 5000).await.unwrap();
    assert!(!admin.gap);
    let mut ids: Vec<String> = admin
        .events
        .iter()
        .map(|d| d.event.event_id.to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        admin.events.len(),
        1000,
        "each event once in the admin stream"
    );
    assert_eq!(ids.len(), 1000);
    for key in &keys {
        let h = bp.history(*key, None, 5000).await.unwrap();
        assert_eq!(h.events.len(), 50, "{key}: each of its events once");
        // Reading on from every entry is contiguous: each entry names the one before it.
        for d in &h.events {
            assert!(!bp.history(*key, Some(d.position), 5000).await.unwrap().gap);
        }
    }
    let mut live = std::collections::HashSet::new();
    for _ in 0..1000 {
        assert!(live.insert(next(&mut rx).await), "a live repeat");
    }
}

#[tokio::test]
async fn subscribes_only_while_there_are_local_listeners() {
    let cfg = config(1000);
    let bp = RedisBackplane::connect(cfg.clone()).unwrap();
    let mut c = redis().await;
    let key = Audience::Key(KeyId::new(7).unwrap());
    let channel = format!("{}:{{vkey:7}}:live", cfg.prefix);
    assert_eq!(numsub(&mut c, &channel).await, 0);
    for _ in 0..20 {
        let (m1, _r1) = Mailbox::new(1 << 20);
        let (m2, _r2) = Mailbox::new(1 << 20);
        let s1 = bp.subscribe(key, m1).await.unwrap();
        let s2 = bp.subscribe(key, m2).await.unwrap();
        assert_eq!(
            numsub(&mut c, &channel).await,
            1,
            "one node subscription for two listeners"
        );
        drop(s1);
        drop(s2);
    }
    // Unsubscribing is asynchronous; wait (bounded) until it shows.
    let mut n = -1;
    for _ in 0..100 {
        n = numsub(&mut c, &channel).await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 0, "no subscription left after the last listener went");
    // A node with no listener of key 8 gets none of its traffic.
    let other = format!("{}:{{vkey:8}}:live", cfg.prefix);
    assert_eq!(numsub(&mut c, &other).await, 0);
}

#[tokio::test]
async fn reports_a_gap_when_the_cursor_is_older_than_the_stream() {
    let cfg = config(10);
    let prefix = cfg.prefix.clone();
    let bp_prefix = |_: &Arc<RedisBackplane>| prefix.clone();
    let bp = RedisBackplane::connect(cfg).unwrap();
    let key = Audience::Key(KeyId::new(9).unwrap());
    bp.publish(&[key], &event("first")).await.unwrap();
    let first = bp.history(key, None, 1).await.unwrap().events[0].position;
    // MAXLEN ~ trims whole stream nodes (100 entries), so write well past that.
    for i in 0..400 {
        bp.publish(&[key], &event(&format!("e{i}"))).await.unwrap();
    }
    let h = bp.history(key, Some(first), 10).await.unwrap();
    assert!(h.gap, "entries after the cursor were trimmed");
    let held = bp.history(key, None, 1000).await.unwrap().events;
    let last = held.last().unwrap().position;
    assert!(
        !bp.history(key, Some(last), 10).await.unwrap().gap,
        "up to date"
    );
    let h = bp.history(key, Some(held[0].position), 10).await.unwrap();
    assert!(!h.gap, "cursor at the oldest entry held: contiguous");
    assert_eq!(h.events[0].position, held[1].position);
    // The stream is wiped (Redis restarted without persistence): an old cursor learns it.
    let mut c = redis().await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:{{vkey:9}}:stream", bp_prefix(&bp)))
        .query_async(&mut c)
        .await
        .unwrap_or(0);
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:{{vkey:9}}:last", bp_prefix(&bp)))
        .query_async(&mut c)
        .await
        .unwrap_or(0);
    bp.publish(&[key], &event("after-wipe")).await.unwrap();
    let h = bp.history(key, Some(last), 10).await.unwrap();
    assert!(
        h.gap,
        "history restarted after the cursor's stream was lost"
    );
    assert_eq!(h.events.len(), 1);
}

#[tokio::test]
async fn a_dropped_subscriber_connection_reconnects_and_fills_the_gap() {
    let cfg = config(1000);
    let mut cutoff = CutOff::new().await;
    let bp = RedisBackplane::connect(cutoff.config(cfg.clone())).unwrap();
    let publisher = RedisBackplane::connect(cfg.clone()).unwrap();
    let key = Audience::Key(KeyId::new(11).unwrap());
    let (mb, mut rx) = Mailbox::new(1 << 20);
    let _sub = bp.subscribe(key, mb).await.unwrap();
    publisher.publish(&[key], &event("before")).await.unwrap();
    assert_eq!(next(&mut rx).await, "before");
    // Cut the node off (only its own connections) and keep it off while publishing.
    cutoff.cut().await;
    for i in 0..20 {
        publisher
            .publish(&[key], &event(&format!("during-{i}")))
            .await
            .unwrap();
    }
    // Nobody was subscribed while these were published: only the gap fill can deliver them.
    let channel = format!("{}:{{{key}}}:live", cfg.prefix);
    assert_eq!(numsub(&mut redis().await, &channel).await, 0);
    cutoff.restore().await;
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(next(&mut rx).await);
    }
    let want: Vec<String> = (0..20).map(|i| format!("during-{i}")).collect();
    assert_eq!(got, want, "every event once, in order");
    publisher.publish(&[key], &event("after")).await.unwrap();
    assert_eq!(next(&mut rx).await, "after");
    assert!(rx.try_recv().is_none(), "no duplicates");
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_hang() {
    let mut cfg = config(10);
    cfg.url = "redis://127.0.0.1:1/".into();
    let bp: Arc<dyn Backplane> = RedisBackplane::connect(cfg).unwrap();
    assert!(bp.ping().await.is_err());
    assert!(bp.publish(&[Audience::Global], &event("x")).await.is_err());
    let (mb, _rx) = Mailbox::new(1024);
    assert!(bp.subscribe(Audience::Global, mb).await.is_err());
    assert!(RedisBackplane::connect(RedisConfig::new("not a url")).is_err());
}

#[tokio::test]
async fn the_task_registry_keeps_owner_and_a_terminal_state() {
    use herald_domain::task::TaskState;
    use herald_domain::vocabulary::TaskStatus;
    let cfg = config(10);
    let bp = RedisBackplane::connect(cfg.clone()).unwrap();
    let state = |status: TaskStatus, progress: u8| TaskState {
        task_id: "task-1".into(),
        task_type: "image".into(),
        status,
        progress,
        message: None,
        result: None,
        error: None,
        virtual_key_id: KeyId::new(5).unwrap(),
        updated_at: chrono::Utc::now(),
    };
    assert!(bp.task("task-1").await.unwrap().is_none());
    bp.record_task(&state(TaskStatus::Running, 20))
        .await
        .unwrap();
    assert_eq!(bp.task("task-1").await.unwrap().unwrap().progress, 20);
    bp.record_task(&state(TaskStatus::Completed, 100))
        .await
        .unwrap();
    bp.record_task(&state(TaskStatus::Running, 60))
        .await
        .unwrap();
    let got = bp.task("task-1").await.unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.progress, got.virtual_key_id.get()),
        ("completed", 100, 5)
    );
    let mut c = redis().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:task:task-1", cfg.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0, "tasks expire");
}

#[tokio::test]
async fn a_listener_that_has_received_nothing_yet_still_gets_what_was_published_while_disconnected()
{
    let cfg = config(1000);
    let mut cutoff = CutOff::new().await;
    let bp = RedisBackplane::connect(cutoff.config(cfg.clone())).unwrap();
    let publisher = RedisBackplane::connect(cfg.clone()).unwrap();
    let key = Audience::Key(KeyId::new(12).unwrap());
    // History from before the subscription must not be replayed to it.
    publisher.publish(&[key], &event("old")).await.unwrap();
    let (mb, mut rx) = Mailbox::new(1 << 20);
    let _sub = bp.subscribe(key, mb).await.unwrap();
    cutoff.cut().await;
    for i in 0..5 {
        publisher
            .publish(&[key], &event(&format!("while-down-{i}")))
            .await
            .unwrap();
    }
    // Published with nobody subscribed: only the gap fill, from the floor taken at subscribe
    // time, can deliver these.
    let channel = format!("{}:{{{key}}}:live", cfg.prefix);
    assert_eq!(numsub(&mut redis().await, &channel).await, 0);
    cutoff.restore().await;
    for i in 0..5 {
        assert_eq!(next(&mut rx).await, format!("while-down-{i}"));
    }
    assert!(rx.try_recv().is_none(), "nothing older, nothing twice");
}

/// A TCP proxy to Redis whose existing connections can be frozen: bytes stop flowing both ways
/// but nothing is closed — a silently dead connection (a dropped route, a hung peer). New
/// connections still pass.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
}

impl FreezingProxy {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>> = Arc::default();
        let flags = frozen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                flags.lock().unwrap().push(flag.clone());
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut r, mut w, flag) in [
                    (
                        Box::new(dr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        flag.clone(),
                    ),
                    (Box::new(ur), Box::new(dw), flag.clone()),
                ] {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(n) = r.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            // Frozen: swallow everything from now on, close nothing.
                            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                                continue;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, frozen }
    }

    fn freeze_existing(&self) {
        for f in self.frozen.lock().unwrap().iter() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_silently_dead_subscriber_connection_is_found_by_the_probe_and_the_gap_filled() {
    let proxy = FreezingProxy::start().await;
    let direct = config(1000);
    let mut through = direct.clone();
    through.url = format!("redis://{}/", proxy.addr);
    let node = RedisBackplane::connect(through).unwrap();
    let publisher = RedisBackplane::connect(direct).unwrap();
    let key = Audience::Key(KeyId::new(12).unwrap());
    let (mb, mut rx) = Mailbox::new(1 << 20);
    let _sub = node.subscribe(key, mb).await.unwrap();
    publisher.publish(&[key], &event("before")).await.unwrap();
    assert_eq!(next(&mut rx).await, "before");
    // Every connection the node has goes silent: no FIN, no RST, no bytes.
    proxy.freeze_existing();
    for i in 0..5 {
        publisher
            .publish(&[key], &event(&format!("silent-{i}")))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut rx).await);
    }
    let want: Vec<String> = (0..5).map(|i| format!("silent-{i}")).collect();
    assert_eq!(got, want, "found by the probe, refilled once, in order");
    publisher.publish(&[key], &event("after")).await.unwrap();
    assert_eq!(next(&mut rx).await, "after");
    assert!(rx.try_recv().is_none(), "no duplicates");
}
