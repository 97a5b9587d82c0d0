//! `herald-bench`: the load generator (docs/benchmarks.md). Opens N real connections over K keys
//! (SignalR to Herald or the floor, Socket.IO to the peer), publishes events at a fixed rate or
//! as fast as possible, and prints one JSON line per run: deliveries/s, bus→client latency
//! (p50/p99/p99.9/max), loss, duplicates and misrouted events per key, server RSS per
//! connection and CPU.
//!
//! Long because: `run` drives one scenario from start to end (keys, connections, warm-up,
//! load, drain, measurements) in the order a reader follows; its steps share most locals.
mod client;
mod error;
mod http;
mod longpoll;
mod msgpack;
mod procfs;
mod publish;

use clap::{Parser, ValueEnum};
use client::{ConnSpec, Protocol, Shared, now_ns};
use publish::{Source, SourceConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HubProtocol {
    Json,
    Messagepack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Herald: SignalR, virtual keys created through `POST /v1/keys`.
    Herald,
    /// The floor (`herald-floor`): SignalR, the room is the access token.
    Floor,
    /// The peer (`bench/peers`): Socket.IO 4, the room is the `key` query parameter.
    Peer,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Herald load generator (docs/benchmarks.md); prints one JSON line per run"
)]
struct Args {
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    /// WebSocket base URL(s) of the server(s), comma separated; connection i uses url[i % n].
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
    /// Where reconnects go (default: --url), comma separated, rotated per attempt.
    #[arg(long, value_delimiter = ',')]
    reconnect_url: Vec<String>,
    /// Hub path (default /hubs/spend for herald, /hub for the floor, /socket.io/ for the peer).
    #[arg(long)]
    path: Option<String>,
    /// Herald's HTTP address for /v1/keys and /v1/events (default: host of the first --url).
    #[arg(long)]
    http: Option<String>,
    #[arg(
        long,
        env = "HERALD_MASTER_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    master_key: String,
    /// Use `POST {hub}/negotiate` before each WebSocket (else skipNegotiation).
    #[arg(long)]
    negotiate: bool,
    /// Long polling instead of WebSockets (SignalR targets; always negotiates).
    #[arg(long)]
    long_polling: bool,
    /// SignalR hub protocol over WebSockets: `json` or `messagepack` (Herald, WebSockets only).
    #[arg(long, value_enum, default_value = "json")]
    hub_protocol: HubProtocol,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 100)]
    connections: usize,
    /// Keys (audiences) the connections are spread over: connection i listens to key i % K.
    #[arg(long, short = 'k', default_value_t = 10)]
    keys: usize,
    /// Key ids are key_base+1 ..= key_base+K (default: derived from the clock).
    #[arg(long)]
    key_base: Option<i64>,
    /// New connections per second.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_inflight: usize,
    /// Loopback source addresses to spread over (127.0.0.1 .. 127.0.0.S; 0 = let the OS pick).
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Where events come from.
    #[arg(long, value_enum, default_value = "backplane")]
    source: Source,
    #[arg(
        long,
        env = "HERALD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Exchange `--source amqp` publishes SpendUpdated to. A private name (bound to Herald's
    /// queue with HERALD_AMQP_BIND) keeps a long run's traffic out of other consumers' queues.
    #[arg(long, default_value = "ConduitLLM.Core.Events:SpendUpdated")]
    amqp_exchange: String,
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Herald's HERALD_REDIS_PREFIX (backplane) or the channel prefix (redis-pub:
    /// default `floor` for the floor, `peer` for the peer).
    #[arg(long)]
    redis_prefix: Option<String>,
    /// Events per second (0: as fast as the publishers go).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Publish for this many seconds ...
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// ... or stop after this many events (whichever comes first; 0 = no limit).
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Seconds to stay idle after connecting, before measuring idle RSS and publishing.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// After publishing, wait this long at most for the last deliveries.
    #[arg(long, default_value_t = 15.0)]
    drain: f64,
    /// Server process id(s) whose RSS and CPU are reported (summed), comma separated.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Reconnect (with the last cursor, SignalR) when the server closes a connection.
    #[arg(long)]
    reconnect: bool,
    /// SIGKILL this pid `--kill-after` seconds into publishing (reconnect storm).
    #[arg(long)]
    kill_pid: Option<u32>,
    #[arg(long, default_value_t = 5.0)]
    kill_after: f64,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Exit non-zero unless every connection connected, something was delivered and nothing
    /// was lost, duplicated or misrouted.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("herald-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn secs(f: f64) -> Duration {
    Duration::from_secs_f64(f.clamp(0.0, 1e7))
}

async fn create_keys(http: &str, master: &str, base: i64, k: usize) -> Result<Vec<String>, Error> {
    let mut c = http::Http::new(http);
    let mut keys = Vec::with_capacity(k);
    for i in 1..=k as i64 {
        let id = base + i;
        let r = c
            .post(
                "/v1/keys",
                Some(master),
                &format!("{{\"id\":{id},\"name\":\"bench-{id}\"}}"),
            )
            .await?;
        if r.status != 201 && r.status != 200 {
            return Err(format!("POST /v1/keys id {id}: {} {}", r.status, r.body).into());
        }
        let raw = http::json_string_field(&r.body, "key")
            .ok_or_else(|| format!("POST /v1/keys: no key in {}", r.body))?;
        keys.push(raw.to_owned());
    }
    Ok(keys)
}

async fn run(args: Args) -> Result<bool, Error> {
    if args.connections == 0 || args.keys == 0 || args.url.is_empty() {
        return Err("need at least one connection, one key and one --url".into());
    }
    let started = Instant::now();
    let protocol = match args.target {
        Target::Peer => Protocol::SocketIo,
        _ => Protocol::SignalR,
    };
    let path = args.path.clone().unwrap_or_else(|| {
        match args.target {
            Target::Herald => "/hubs/spend",
            Target::Floor => "/hub",
            Target::Peer => "/socket.io/",
        }
        .to_owned()
    });
    let http_host = match &args.http {
        Some(h) => http::authority(h).unwrap_or_else(|_| h.clone()),
        None => http::authority(&args.url[0])?,
    };
    let key_base = args.key_base.unwrap_or_else(|| {
        i64::try_from((now_ns() / 1_000_000_000) % 1_000_000).unwrap_or(0) * 1000
    });
    let run_id = format!("r{:x}", now_ns() / 1_000_000 % 0xffff_ffff);
    let tokens: Vec<String> = match args.target {
        Target::Herald => create_keys(&http_host, &args.master_key, key_base, args.keys).await?,
        _ => (1..=args.keys as i64)
            .map(|i| (key_base + i).to_string())
            .collect(),
    };
    let pids = args.server_pid.clone();
    let rss_before = procfs::rss_kib(&pids);

    // Connect, paced.
    let msgpack = args.hub_protocol == HubProtocol::Messagepack;
    if msgpack && (args.long_polling || protocol != Protocol::SignalR) {
        return Err("--hub-protocol messagepack: SignalR over WebSockets only".into());
    }
    let mut shared = Shared::new(
        run_id.clone(),
        protocol,
        args.connections,
        args.reconnect,
        args.connect_inflight,
    );
    shared.msgpack = msgpack;
    let shared = Arc::new(shared);
    let urls = Arc::new(args.url.clone());
    let reconnect_urls = Arc::new(if args.reconnect_url.is_empty() {
        args.url.clone()
    } else {
        args.reconnect_url.clone()
    });
    let path: Arc<str> = path.into();
    let connect_start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    for i in 0..args.connections {
        let k = i % args.keys;
        let spec = ConnSpec {
            index: i,
            key_id: key_base + 1 + k as i64,
            token: tokens[k].clone(),
            urls: urls.clone(),
            reconnect_urls: reconnect_urls.clone(),
            path: path.clone(),
            negotiate: args.negotiate,
            long_polling: args.long_polling,
            source: (args.source_ips > 0).then(|| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    1 + (i % args.source_ips as usize) as u8,
                ))
            }),
        };
        tokio::spawn(client::run_connection(spec, shared.clone()));
        tokio::time::sleep_until((connect_start + gap * (i as u32 + 1)).into()).await;
    }
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while shared.connected.load(Ordering::Relaxed) + shared.gave_up.load(Ordering::Relaxed)
        < args.connections
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    tokio::time::sleep(secs(args.hold)).await;
    let rss_idle = procfs::rss_kib(&pids);

    // Publish.
    let cfg = SourceConfig {
        source: args.source,
        amqp_url: args.amqp_url.clone(),
        amqp_exchange: args.amqp_exchange.clone(),
        redis_url: args.redis_url.clone(),
        redis_prefix: args.redis_prefix.clone().unwrap_or_else(|| {
            match args.target {
                Target::Herald => "herald",
                Target::Floor => "floor",
                Target::Peer => "peer",
            }
            .to_owned()
        }),
        http_host: http_host.clone(),
        master_key: args.master_key.clone(),
    };
    let workers = publish::publishers(&cfg, args.publishers.max(1)).await?;
    let published = Arc::new(
        (0..args.keys)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let failures = Arc::new(AtomicU64::new(0));
    // How long each publish call takes (µs): the source's share of the bus → client latency.
    let publish_hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?,
    ));
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = procfs::cpu_ticks(&pids);
    let self_cpu_before = procfs::self_cpu_ticks();
    let delivered_before = shared.deliveries.load(Ordering::Relaxed);
    let bytes_before = shared.bytes_received.load(Ordering::Relaxed);
    let pub_start = Instant::now();
    let pub_start_ns = now_ns();
    let pub_end = pub_start + secs(args.duration);
    let mut handles = Vec::new();
    if args.source != Source::None {
        for mut w in workers {
            let (next, published, failures, run_id, publish_hist) = (
                next.clone(),
                published.clone(),
                failures.clone(),
                run_id.clone(),
                publish_hist.clone(),
            );
            let (rate, limit, keys) = (args.rate, args.events, args.keys as u64);
            handles.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if limit > 0 && i >= limit {
                        break;
                    }
                    if rate > 0.0 {
                        let at = pub_start + Duration::from_secs_f64(i as f64 / rate);
                        if at >= pub_end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                    } else if Instant::now() >= pub_end {
                        break;
                    }
                    let (k, seq) = (i % keys, i / keys);
                    let key_id = key_base + 1 + k as i64;
                    let mut ok = false;
                    for _ in 0..3 {
                        let started = Instant::now();
                        match w.publish(&run_id, key_id, seq).await {
                            Ok(()) => {
                                let us = u64::try_from(started.elapsed().as_micros())
                                    .unwrap_or(u64::MAX);
                                let _ = publish_hist
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .record(us.max(1));
                                ok = true;
                                break;
                            }
                            Err(e) => {
                                eprintln!("publish {key_id}/{seq}: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    if ok {
                        published[k as usize].fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let mut killed_at: Option<Instant> = None;
    let mut recovered_at: Option<Instant> = None;
    let mut resumed_at: Option<Instant> = None;
    // Events per key published before the kill: a connection has resumed once it has them all.
    let mut before_kill: Vec<u64> = Vec::new();
    let mut kill_pending = args.kill_pid;
    let watch_kill = |shared: &Shared,
                      killed_at: Option<Instant>,
                      recovered_at: &mut Option<Instant>,
                      resumed_at: &mut Option<Instant>,
                      before_kill: &[u64]| {
        if killed_at.is_none() || resumed_at.is_some() {
            return;
        }
        if recovered_at.is_none() && shared.connected.load(Ordering::Relaxed) >= connected {
            *recovered_at = Some(Instant::now());
        }
        if recovered_at.is_some()
            && shared.tracks.iter().enumerate().all(|(i, t)| {
                let t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                !t.connected || t.has_all_below(before_kill[i % before_kill.len()])
            })
        {
            *resumed_at = Some(Instant::now());
        }
    };
    while handles.iter().any(|h| !h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(pid) = kill_pending
            && pub_start.elapsed() >= secs(args.kill_after)
        {
            before_kill = published
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            killed_at = Some(Instant::now());
            kill_pending = None;
            // Let the clients notice before "everyone is connected" can be true again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        watch_kill(
            &shared,
            killed_at,
            &mut recovered_at,
            &mut resumed_at,
            &before_kill,
        );
    }
    let publish_secs = pub_start.elapsed().as_secs_f64();
    let total_published: u64 = published.iter().map(|p| p.load(Ordering::Relaxed)).sum();

    // Drain: until every connected connection has everything, or no progress for a while.
    let expected_of = |shared: &Shared| -> (u64, u64, u64, u64, u64) {
        let (mut expected, mut unique, mut dups, mut misrouted, mut short) = (0, 0, 0, 0, 0);
        for (i, t) in shared.tracks.iter().enumerate() {
            let t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !t.connected {
                continue;
            }
            let e = published[i % args.keys].load(Ordering::Relaxed);
            expected += e;
            unique += t.unique().min(e);
            dups += t.duplicates;
            misrouted += t.misrouted;
            if t.unique() < e {
                short += 1;
            }
        }
        (expected, unique, dups, misrouted, short)
    };
    let drain_deadline = Instant::now() + secs(args.drain);
    let mut last = shared.deliveries.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let (expected, unique, ..) = expected_of(&shared);
        if unique >= expected || Instant::now() >= drain_deadline {
            break;
        }
        watch_kill(
            &shared,
            killed_at,
            &mut recovered_at,
            &mut resumed_at,
            &before_kill,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.deliveries.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(3) && !args.reconnect {
            break;
        }
    }
    let cpu_after = procfs::cpu_ticks(&pids);
    let self_cpu_after = procfs::self_cpu_ticks();
    let rss_after = procfs::rss_kib(&pids);
    let (expected, unique, duplicates, misrouted, short_conns) = expected_of(&shared);
    let delivered = shared.deliveries.load(Ordering::Relaxed) - delivered_before;
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_secs = if last_ns > pub_start_ns {
        (last_ns - pub_start_ns) as f64 / 1e9
    } else {
        publish_secs
    };
    let window = pub_start.elapsed().as_secs_f64();
    let hz = procfs::clock_ticks_per_sec() as f64;
    let hist = shared
        .hist
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let publish_hist = publish_hist
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let lost = expected.saturating_sub(unique);
    let per_conn = |rss: Option<u64>| match (rss_before, rss) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(((a as f64 - b as f64) * 1024.0 / connected as f64).round())
        }
        _ => None,
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let line = serde_json::json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "hub_protocol": format!("{:?}", args.hub_protocol).to_lowercase(),
        "source": format!("{:?}", args.source).to_lowercase(),
        "connections": args.connections,
        "keys": args.keys,
        "connected": connected,
        "connect_failures": shared.connect_failures.load(Ordering::Relaxed),
        "connect_s": round3(connect_secs),
        "rate_target": args.rate,
        "published": total_published,
        "publish_failures": failures.load(Ordering::Relaxed),
        "publish_s": round3(publish_secs),
        "events_per_s": round1(total_published as f64 / publish_secs.max(1e-9)),
        "expected": expected,
        "delivered": delivered,
        "deliveries_per_s": round1(delivered as f64 / delivery_secs.max(1e-9)),
        "lost": lost,
        "short_connections": short_conns,
        "duplicates": duplicates,
        "misrouted": misrouted,
        "other_records": shared.other_records.load(Ordering::Relaxed),
        // WebSocket payload bytes received while publishing (events, pings; not the handshake).
        "bytes_per_delivery": round1(
            (shared.bytes_received.load(Ordering::Relaxed) - bytes_before) as f64
                / delivered.max(1) as f64
        ),
        "latency_ms": {
            "p50": ms(hist.value_at_quantile(0.5)),
            "p99": ms(hist.value_at_quantile(0.99)),
            "p999": ms(hist.value_at_quantile(0.999)),
            "max": ms(hist.max()),
            "samples": hist.len(),
        },
        "publish_ms": {
            "p50": ms(publish_hist.value_at_quantile(0.5)),
            "p99": ms(publish_hist.value_at_quantile(0.99)),
            "max": ms(publish_hist.max()),
        },
        "server_rss_kib": {"before": rss_before, "idle": rss_idle, "after": rss_after},
        "rss_per_conn_bytes": per_conn(rss_idle),
        "server_cpu_pct": match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(round1((a - b) as f64 / hz / window * 100.0)),
            _ => None,
        },
        "client_cpu_pct": match (self_cpu_before, self_cpu_after) {
            (Some(b), Some(a)) => Some(round1((a - b) as f64 / hz / window * 100.0)),
            _ => None,
        },
        "disconnects": shared.disconnects.load(Ordering::Relaxed),
        "reconnects": shared.connects.load(Ordering::Relaxed).saturating_sub(connected as u64),
        "killed": killed_at.is_some(),
        "recovered_s": killed_at.map(|k| recovered_at.map(|r| round3((r - k).as_secs_f64()))),
        "resumed_s": killed_at.map(|k| resumed_at.map(|r| round3((r - k).as_secs_f64()))),
        "wall_s": round3(started.elapsed().as_secs_f64()),
    });
    println!("{line}");
    shared.stop.store(true, Ordering::Relaxed);
    let ok = connected == args.connections
        && (args.source == Source::None || (delivered > 0 && total_published > 0))
        && lost == 0
        && duplicates == 0
        && misrouted == 0
        && failures.load(Ordering::Relaxed) == 0;
    Ok(!args.check || ok)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
