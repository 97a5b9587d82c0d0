//! Herald as real processes, and dependencies a test may stop without disturbing others: a
//! private redis-server, a private RabbitMQ node and a TCP proxy that can cut connections
//! (e.g. to PostgreSQL).
#![allow(dead_code)]

use super::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A herald process; stderr (the logs) goes to a file read after it stops.
pub struct Herald {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `HERALD_ADMIN_LISTEN` port, when the test set one.
    pub admin: Option<SocketAddr>,
    logs: PathBuf,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.logs);
    }
}

impl Herald {
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let logs = std::env::temp_dir().join(unique("herald-ops-log-"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") || k.starts_with("OTEL_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_MASTER_KEY", MASTER_KEY)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&logs).unwrap());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("herald printed where it listens")
                .unwrap();
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.parse().unwrap();
            }
        };
        let admin = env
            .iter()
            .any(|(k, _)| *k == "HERALD_ADMIN_LISTEN")
            .then(|| {
                loop {
                    let line = lines
                        .next()
                        .expect("herald printed its admin address")
                        .unwrap();
                    if let Some(a) = line.strip_prefix("admin listening on http://") {
                        break a.parse().unwrap();
                    }
                }
            });
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            admin,
            logs,
        }
    }

    /// Stops the process with SIGTERM and returns its log lines.
    pub fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.logs)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Where `/metrics`, `/readyz` and the admin API are: the admin port when there is one.
    pub fn internal(&self) -> SocketAddr {
        self.admin.unwrap_or(self.addr)
    }

    pub async fn metrics(&self) -> String {
        let r = http(self.internal(), "GET", "/metrics", &[], "").await;
        assert_eq!(r.status, 200);
        r.body
    }

    pub async fn wait_ready(&self) {
        wait_ready_at(self.internal()).await;
    }

    pub async fn create_key(&self, id: i64, budget: &str) -> String {
        create_key_at(self.internal(), id, Some(budget)).await
    }

    /// Resident memory of the process in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the process (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The value of the series of `name` whose labels include all of `labels`; 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A test's environment on the real services; dropping it deletes its queues and exchanges.
pub struct RealEnv {
    pub vars: Vec<(&'static str, String)>,
    /// The private MassTransit namespace the queue is bound to.
    pub ns: String,
    queue: String,
}

impl Drop for RealEnv {
    fn drop(&mut self) {
        delete_amqp_objects(&self.queue, &self.ns);
    }
}

/// Environment for a node on the real services with its own database, queue and prefix, bound
/// to a private MassTransit namespace (`<queue>.ns`). Keep it alive for the whole test.
pub async fn real_env(node: &str) -> RealEnv {
    let database = create_database().await;
    let queue = unique("herald.test.");
    let ns = format!("{queue}.ns");
    let bind = herald_domain::vocabulary::bus_names()
        .map(|t| format!("{ns}:{t}"))
        .collect::<Vec<_>>()
        .join(",");
    let env = vec![
        ("HERALD_AMQP_URL", AMQP_URL.to_owned()),
        ("HERALD_REDIS_URL", REDIS_URL.to_owned()),
        ("HERALD_DATABASE_URL", database_url(&database)),
        ("HERALD_AMQP_QUEUE", queue.clone()),
        ("HERALD_AMQP_BIND", bind),
        ("HERALD_REDIS_PREFIX", unique("herald-ops-")),
        ("HERALD_MIGRATE", "true".to_owned()),
        ("HERALD_NODE_ID", node.to_owned()),
    ];
    RealEnv {
        vars: env,
        ns,
        queue,
    }
}

/// Publishes a MassTransit envelope to the fanout `exchange` with AMQP `headers`.
pub async fn publish_mt(exchange: &str, body: &str, headers: &[(&str, &str)]) {
    amqp_publish_with_headers(
        &[(
            exchange.to_owned(),
            lapin::ExchangeKind::Fanout,
            String::new(),
            body.as_bytes().to_vec(),
            "application/vnd.masstransit+json",
        )],
        headers,
    )
    .await;
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on a free port, so stopping it disturbs no other test.
pub struct PrivateRedis {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    persistent: bool,
}

impl PrivateRedis {
    /// With an append-only file in `dir`: stopping and starting it again is a restart, not a
    /// wipe (production runs AOF).
    pub fn start_on(port: u16, dir: PathBuf) -> Self {
        Self::start(port, dir, true)
    }

    /// With nothing on disk: stopping it wipes it, as the chaos test wants.
    pub fn volatile_on(port: u16, dir: PathBuf) -> Self {
        Self::start(port, dir, false)
    }

    fn start(port: u16, dir: PathBuf, persistent: bool) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            child: None,
            dir,
            port,
            persistent,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let child = Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it again on the same port and dir after `stop`.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL: a volatile instance loses everything, a persistent one keeps its AOF.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private RabbitMQ node (`scripts/private-rabbitmq`) on free ports with its own data, so a
/// test may stop and start the broker without touching the machine's. Stopped and its
/// directory removed when dropped.
pub struct PrivateRabbit {
    dir: PathBuf,
    pub port: u16,
    /// The AMQPS port, when started with [`PrivateRabbit::start_tls`].
    pub tls_port: Option<u16>,
}

impl PrivateRabbit {
    /// Starts the node (a few seconds) and waits until it accepts AMQP.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("herald-test-rabbitmq-"));
        let out = private_rabbitmq(&["start", dir.to_str().unwrap()]);
        let port = String::from_utf8_lossy(&out)
            .trim()
            .parse()
            .expect("scripts/private-rabbitmq start prints the AMQP port");
        Self {
            dir,
            port,
            tls_port: None,
        }
    }

    /// Also with an AMQPS listener requiring a client certificate; `certs` holds ca.crt,
    /// server.crt and server.key (scripts/tls-test-certs).
    pub fn start_tls(certs: &std::path::Path) -> Self {
        let dir = std::env::temp_dir().join(unique("herald-test-rabbitmq-"));
        let out = private_rabbitmq(&["start", dir.to_str().unwrap(), certs.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&out);
        let ports: Vec<u16> = out
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        assert_eq!(ports.len(), 2, "AMQP and AMQPS ports, got {out:?}");
        Self {
            dir,
            port: ports[0],
            tls_port: Some(ports[1]),
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `stop_app` then `start_app`: every connection is closed, durable queues and their
    /// persistent messages stay. Returns once it accepts AMQP again.
    pub fn restart(&self) {
        private_rabbitmq(&["restart", self.dir.to_str().unwrap()]);
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/private-rabbitmq"))
            .args(["stop", self.dir.to_str().unwrap_or_default()])
            .stdout(Stdio::null())
            .status();
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/private-rabbitmq ARGS` under a deadline (`timeout`); panics on failure with
/// its stderr. Returns stdout.
fn private_rabbitmq(args: &[&str]) -> Vec<u8> {
    let out = Command::new("timeout")
        .args(["-k", "10", "240"])
        .arg(repo_root().join("scripts/private-rabbitmq"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("timeout and bash are installed");
    assert!(
        out.status.success(),
        "scripts/private-rabbitmq {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A TCP proxy in front of a real service (its tasks need a multi-threaded test runtime when
/// the test also blocks, e.g. in `Herald::start`). `cut()` closes every proxied connection and refuses
/// new ones until `restore()`: the service looks down to whoever connects through it.
pub struct FaultProxy {
    pub addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            open,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
