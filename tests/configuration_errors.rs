//! A configuration that cannot work stops the real binary at once with the variable named
//! (docs/configuration.md): malformed URLs are not retried, and `migrate`/`keys` say what is
//! wrong with the database. Runs against the machine's PostgreSQL on 127.0.0.1:5432.
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs herald with only `vars` set and fails the test if it is still running after 20 s.
fn herald(args: &[&str], vars: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child
        .try_wait()
        .expect("herald can be waited for")
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} with {vars:?} still runs after 20 s instead of stopping");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Output { status, stderr, .. } = child.wait_with_output().expect("herald's output");
    (
        status.success(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn assert_stops(args: &[&str], vars: &[(&str, &str)], needles: &[&str]) {
    let (ok, stderr) = herald(args, vars);
    assert!(!ok, "herald {args:?} succeeded: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn malformed_urls_stop_start_up_naming_the_variable() {
    assert_stops(
        &["consume"],
        &[
            ("HERALD_AMQP_URL", "amqp://[bad"),
            ("HERALD_REDIS_URL", "redis://127.0.0.1:6379"),
            ("HERALD_DATABASE_URL", "postgres://postgres@127.0.0.1/test"),
        ],
        &["HERALD_AMQP_URL", "expected"],
    );
    assert_stops(
        &["serve"],
        &[
            ("HERALD_REDIS_URL", "redis://[bad"),
            ("HERALD_DATABASE_URL", "postgres://postgres@127.0.0.1/test"),
        ],
        &["HERALD_REDIS_URL", "expected"],
    );
    let (ok, stderr) = herald(
        &["migrate"],
        &[("HERALD_DATABASE_URL", "postgres://u:hunter2@h:port/db")],
    );
    assert!(!ok && stderr.contains("HERALD_DATABASE_URL") && stderr.contains("expected"));
    assert!(
        !stderr.contains("hunter2"),
        "the password is not echoed: {stderr}"
    );
}

#[test]
fn migrate_and_keys_say_what_is_wrong_with_the_database() {
    let missing = format!(
        "postgres://postgres@127.0.0.1:5432/herald_missing_{}",
        std::process::id()
    );
    for args in [&["migrate"][..], &["keys", "create", "--id", "1"][..]] {
        assert_stops(
            args,
            &[("HERALD_DATABASE_URL", &missing)],
            &["HERALD_DATABASE_URL", "does not exist"],
        );
    }
    // A port nobody listens on: bound and released just now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let refused = format!("postgres://postgres@127.0.0.1:{port}/herald");
    assert_stops(
        &["migrate"],
        &[("HERALD_DATABASE_URL", &refused)],
        &["HERALD_DATABASE_URL", "Connection refused"],
    );
}
