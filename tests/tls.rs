//! TLS to every dependency (docs/security.md, "TLS to the dependencies"), end to end against
//! private servers that accept TLS only and require a client certificate, all made with
//! certificates generated for the test (scripts/tls-test-certs): a redis-server with
//! `--tls-port` and no plain port, a RabbitMQ node with an AMQPS listener
//! (scripts/private-rabbitmq), and a PostgreSQL cluster with `ssl=on` whose pg_hba.conf refuses
//! unencrypted connections. A herald process given `rediss://`, `amqps://` and
//! `sslmode=require` URLs delivers an event from the bus to a SignalR client; given another CA
//! it is refused with the certificate error named. Everything started here is stopped and
//! removed when the test ends (pass or fail).
#![allow(clippy::unwrap_used)]
mod common;

use common::process::{Herald, PrivateRabbit, free_port};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` under a deadline, panicking with its output if it fails.
fn run(cmd: &mut Command, what: &str) -> Output {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["-k", "10", "120"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let out = wrapped.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits until something accepts TCP connections on `port`.
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A redis-server on a TLS port only, requiring a client certificate.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(certs: &Path) -> Self {
        let dir = TempDir(std::env::temp_dir().join(unique("herald-tls-redis-")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let port = free_port();
        let file = |f: &str| certs.join(f).to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &file("server.crt")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.crt")])
            .args(["--tls-auth-clients", "yes"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        wait_port(port, "redis-server --tls-port");
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL cluster (initdb + pg_ctl) with `ssl=on`, accepting only TLS
/// connections that present a client certificate signed by the test CA. Run as the
/// `postgres` user when the test runs as root (PostgreSQL refuses to run as root).
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cmd` as the user PostgreSQL runs as: `postgres` under root, else the caller.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

impl TlsPostgres {
    fn start(certs: &Path) -> Self {
        let bin = postgres_bin().expect("PostgreSQL's initdb under /usr/lib/postgresql");
        let dir = TempDir(std::env::temp_dir().join(unique("herald-tls-postgres-")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let data = dir.0.join("data");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(&dir.0), "chown");
        }
        run(
            as_pg(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres"]),
            "initdb",
        );
        // The key must belong to the server's user and be private to it.
        for (f, mode) in [
            ("server.crt", "644"),
            ("server.key", "600"),
            ("ca.crt", "644"),
        ] {
            let mut c = Command::new("install");
            if is_root() {
                c.args(["-o", "postgres"]);
            }
            run(
                c.args(["-m", mode]).arg(certs.join(f)).arg(data.join(f)),
                "install",
            );
        }
        // TLS with a client certificate or nothing: a plain connection finds no entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
        )
        .unwrap();
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt -c fsync=off",
            dir.0.display()
        );
        run(
            as_pg(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.0.join("log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        Self {
            bin,
            data,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The servers of one test and the certificates they and Herald use.
struct Servers {
    certs: TempDir,
    redis: TlsRedis,
    rabbit: PrivateRabbit,
    postgres: TlsPostgres,
}

impl Servers {
    fn start() -> Self {
        let certs = TempDir(std::env::temp_dir().join(unique("herald-tls-certs-")));
        run(
            Command::new(repo().join("scripts/tls-test-certs")).arg(&certs.0),
            "scripts/tls-test-certs",
        );
        let redis = TlsRedis::start(&certs.0);
        let postgres = TlsPostgres::start(&certs.0);
        let rabbit = PrivateRabbit::start_tls(&certs.0);
        Self {
            certs,
            redis,
            rabbit,
            postgres,
        }
    }

    fn file(&self, name: &str) -> String {
        self.certs.0.join(name).to_str().unwrap().to_owned()
    }

    /// Herald's environment: TLS URLs to all three, trusting `ca`, with the client certificate.
    fn env(&self, ca: &str, queue: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "HERALD_REDIS_URL",
                format!("rediss://localhost:{}/", self.redis.port),
            ),
            (
                "HERALD_AMQP_URL",
                format!(
                    "amqps://guest:guest@localhost:{}/%2f",
                    self.rabbit.tls_port.unwrap()
                ),
            ),
            (
                "HERALD_DATABASE_URL",
                format!(
                    "postgres://postgres@localhost:{}/postgres?sslmode=require",
                    self.postgres.port
                ),
            ),
            ("HERALD_TLS_CA_FILE", self.file(ca)),
            ("HERALD_TLS_CERT_FILE", self.file("client.crt")),
            ("HERALD_TLS_KEY_FILE", self.file("client.key")),
            ("HERALD_AMQP_QUEUE", queue.to_owned()),
            ("HERALD_REDIS_PREFIX", unique("herald-tls-")),
            ("HERALD_MIGRATE", "true".to_owned()),
        ]
    }
}

/// `herald ARGS` with exactly `env` (and the run tag), under a deadline: (success, stderr).
fn herald(args: &[&str], env: &[(&'static str, String)]) -> (bool, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "60"])
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    if let Ok(tag) = std::env::var("HERALD_TEST_RUN") {
        cmd.env("HERALD_TEST_RUN", tag);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_delivers_over_tls_to_every_dependency_and_refuses_another_ca() {
    if postgres_bin().is_none() {
        skip(
            "tls",
            "no PostgreSQL server binaries under /usr/lib/postgresql",
        );
        return;
    }
    let servers = Servers::start();
    let queue = unique("herald.test.");
    let env = servers.env("ca.crt", &queue);

    let node = Herald::start(&["standalone"], &env);
    // Ready means the store, the backplane and the consumer are connected (over TLS: the
    // servers take nothing else).
    node.wait_ready().await;
    let key = node.create_key(7, "10").await;
    let mut client = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();
    // Published over amqps:// by `herald publish`, consumed over amqps://, the key read from
    // PostgreSQL over TLS, delivered through Redis over TLS.
    let (ok, stderr) = herald(
        &[
            "publish",
            "SpendUpdated",
            "--json",
            r#"{"keyId":7,"amount":1,"newTotalSpend":1}"#,
        ],
        &env,
    );
    assert!(ok, "herald publish over amqps:// failed: {stderr}");
    let (name, args) = client.next_invocation(WAIT).await.expect("an event");
    assert_eq!(name, "SpendUpdate", "{args}");
    let logs = node.stop();
    assert!(
        !logs.iter().any(|l| l.contains("certificate")),
        "no certificate trouble expected: {logs:?}"
    );

    // Another CA: each dependency refuses, and the error says why.
    let wrong = servers.env("other-ca.crt", &queue);
    let (ok, stderr) = herald(&["migrate"], &wrong);
    assert!(!ok, "migrate trusted the wrong CA: {stderr}");
    assert!(
        stderr.contains("HERALD_DATABASE_URL") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    let (ok, stderr) = herald(
        &["publish", "SpendUpdated", "--json", r#"{"keyId":7}"#],
        &wrong,
    );
    assert!(!ok, "publish trusted the wrong CA: {stderr}");
    assert!(
        stderr.contains("RabbitMQ") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // Redis is connected lazily: the node starts, is not ready, and says why.
    let mut wrong_redis = wrong.clone();
    wrong_redis.retain(|(k, _)| *k != "HERALD_DATABASE_URL" && *k != "HERALD_AMQP_URL");
    let node = Herald::start(&["standalone"], &wrong_redis);
    let mut body = String::new();
    for _ in 0..50 {
        let r = http(node.internal(), "GET", "/readyz", &[], "").await;
        body = r.body;
        if r.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("redis"), "{body}");
    let logs = node.stop();
    assert!(
        logs.iter().any(|l| l.contains("UnknownIssuer")),
        "the certificate error is logged: {logs:?}"
    );
}

/// Variables for one run of herald.
type Vars<'a> = &'a [(&'static str, String)];

#[test]
fn unusable_tls_files_stop_start_up_naming_the_variable() {
    let dir = TempDir(std::env::temp_dir().join(unique("herald-tls-files-")));
    run(
        Command::new(repo().join("scripts/tls-test-certs")).arg(&dir.0),
        "scripts/tls-test-certs",
    );
    let path = |f: &str| dir.0.join(f).to_str().unwrap().to_owned();
    std::fs::write(dir.0.join("junk.pem"), "not a certificate\n").unwrap();
    let cases: &[(Vars, &[&str])] = &[
        (
            &[("HERALD_TLS_CA_FILE", path("missing.crt"))],
            &["HERALD_TLS_CA_FILE", "cannot read", "missing.crt"],
        ),
        (
            &[("HERALD_TLS_CA_FILE", path("junk.pem"))],
            &["HERALD_TLS_CA_FILE", "no certificate"],
        ),
        (
            // A key is not a CA certificate.
            &[("HERALD_TLS_CA_FILE", path("client.key"))],
            &["HERALD_TLS_CA_FILE", "no certificate"],
        ),
        (
            &[("HERALD_TLS_CERT_FILE", path("client.crt"))],
            &["HERALD_TLS_KEY_FILE", "both or neither"],
        ),
        (
            &[
                ("HERALD_TLS_CERT_FILE", path("client.crt")),
                ("HERALD_TLS_KEY_FILE", path("junk.pem")),
            ],
            &["HERALD_TLS_KEY_FILE", "no usable private key"],
        ),
        (
            // The server's key with the client's certificate.
            &[
                ("HERALD_TLS_CERT_FILE", path("client.crt")),
                ("HERALD_TLS_KEY_FILE", path("server.key")),
            ],
            &["HERALD_TLS_KEY_FILE", "cannot be used with"],
        ),
    ];
    for (env, needles) in cases {
        let mut env = env.to_vec();
        env.push(("HERALD_LISTEN", "127.0.0.1:0".to_owned()));
        let (ok, stderr) = herald(&["standalone"], &env);
        assert!(!ok, "{env:?} started: {stderr}");
        for n in *needles {
            assert!(stderr.contains(n), "{n:?} not in {stderr:?} ({env:?})");
        }
    }
}

/// Three redis-servers with `--tls-cluster yes`, TLS only, made one 3-master cluster with
/// `redis-cli --cluster create --tls`.
struct TlsCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl TlsCluster {
    fn start(certs: &Path) -> Self {
        let dir = TempDir(std::env::temp_dir().join(unique("herald-tls-cluster-")));
        let file = |f: &str| certs.join(f).to_str().unwrap().to_owned();
        // The cluster bus is the port + 10000: both must be free.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = 20000 + rand::random::<u16>() % 10000;
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !ports.contains(&p) && free(p) && free(p + 10000) {
                ports.push(p);
            }
        }
        let mut cluster = Self {
            children: Vec::new(),
            ports: ports.clone(),
            _dir: dir,
        };
        for p in &ports {
            let node = cluster._dir.0.join(p.to_string());
            std::fs::create_dir_all(&node).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &p.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--tls-cluster", "yes"])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-auth-clients", "yes"])
                .arg("--dir")
                .arg(&node)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            cluster.children.push(child);
            wait_port(*p, "redis-server --cluster-enabled --tls-port");
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = Command::new("redis-cli");
        create
            .args(["--tls", "--cacert", &file("ca.crt")])
            .args(["--cert", &file("client.crt"), "--key", &file("client.key")])
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        run(&mut create, "redis-cli --cluster create --tls");
        cluster
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_ok(&self, certs: &Path) {
        let file = |f: &str| certs.join(f).to_str().unwrap().to_owned();
        let deadline = Instant::now() + WAIT;
        for p in &self.ports {
            loop {
                let out = Command::new("redis-cli")
                    .args(["--tls", "--cacert", &file("ca.crt")])
                    .args(["--cert", &file("client.crt"), "--key", &file("client.key")])
                    .args(["-p", &p.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the TLS cluster is not ok on {p}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Redis Cluster over TLS: the command connection (publish script, history) and the shard
/// subscriber connections Herald opens itself all go over TLS to a cluster that takes nothing
/// else; an event posted over HTTP reaches a SignalR client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_delivers_through_a_redis_cluster_over_tls() {
    let certs = TempDir(std::env::temp_dir().join(unique("herald-tls-certs-")));
    run(
        Command::new(repo().join("scripts/tls-test-certs")).arg(&certs.0),
        "scripts/tls-test-certs",
    );
    let cluster = TlsCluster::start(&certs.0);
    cluster.wait_ok(&certs.0);
    let file = |f: &str| certs.0.join(f).to_str().unwrap().to_owned();
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let node = Herald::start(
        &["standalone"],
        &[
            (
                "HERALD_REDIS_URL",
                format!("rediss+cluster://{}", nodes.join(",")),
            ),
            ("HERALD_REDIS_PREFIX", unique("herald-tls-")),
            ("HERALD_TLS_CA_FILE", file("ca.crt")),
            ("HERALD_TLS_CERT_FILE", file("client.crt")),
            ("HERALD_TLS_KEY_FILE", file("client.key")),
        ],
    );
    node.wait_ready().await;
    let key = node.create_key(9, "10").await;
    let mut client = SignalR::connect(&format!("ws://{}/hubs/spend?access_token={key}", node.addr))
        .await
        .unwrap();
    let event = r#"{"specversion":"1.0","id":"tls-cluster-1","source":"/billing","type":"SpendUpdated","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{"keyId":9,"amount":1,"newTotalSpend":1}}"#;
    let auth = format!("Bearer {MASTER_KEY}");
    let r = http(
        node.internal(),
        "POST",
        "/v1/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/cloudevents+json"),
        ],
        event,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (name, args) = client.next_invocation(WAIT).await.expect("an event");
    assert_eq!(name, "SpendUpdate", "{args}");
    let logs = node.stop();
    assert!(
        !logs.iter().any(|l| l.contains("certificate")),
        "no certificate trouble expected: {logs:?}"
    );
}
