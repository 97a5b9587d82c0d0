//! What each subcommand does.
use crate::cli::{Command, Invocation, KeyArgs, KeysCommand, PublishArgs};
use crate::configuration::Settings;
use crate::keys::KeySpec;
use crate::startup::{Application, Role, StartupError, shutdown_signal};
use crate::telemetry;
use crate::values::without_userinfo;
use herald_domain::money::Budget;
use herald_domain::tls::ClientTls;
use herald_domain::{Cause, KeyHash, KeyId, RawKey};
use herald_ingest::amqp::{self, AmqpError, EnvelopeKind};
use herald_store::{PostgresStore, ProbeError, Store, StoreError};
use std::time::Duration;
use tokio::sync::watch;

/// Why a command failed; `main` prints it after `herald: ` and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A missing or malformed setting or argument; the text names it.
    #[error("{0}")]
    Usage(String),
    /// PostgreSQL could not do what `migrate` or `keys` asked.
    #[error("HERALD_DATABASE_URL: {what} ({url}): {cause}")]
    Database {
        what: &'static str,
        /// Without its user information.
        url: String,
        #[source]
        cause: Cause,
    },
    #[error("key {0} already exists")]
    KeyExists(KeyId),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] AmqpError),
}

impl From<String> for CommandError {
    fn from(message: String) -> Self {
        Self::Usage(message)
    }
}

pub async fn run(invocation: Invocation) -> Result<(), CommandError> {
    let Invocation { command, settings } = invocation;
    // Only the serving roles make spans; the CLI commands do not export.
    let serving = matches!(
        command,
        Command::Standalone | Command::Consume | Command::Serve
    );
    let tracing = telemetry::init(settings.log_format, &settings.node_id, serving)
        .map_err(CommandError::Usage)?;
    let result = match command {
        Command::Standalone => run_role(Role::Standalone, settings).await,
        Command::Consume => run_role(Role::Consume, settings).await,
        Command::Serve => run_role(Role::Serve, settings).await,
        Command::Migrate => {
            let url = database_url(&settings)?;
            check_database(url, &settings.tls).await?;
            let applied = herald_store::migrate(url, &settings.tls)
                .await
                .map_err(|e| store_failed(url, "migrations failed", e))?;
            eprintln!("migrations applied: {applied:?}");
            Ok(())
        }
        Command::Keys(command) => keys(&settings, command).await,
        Command::Publish(args) => publish(&settings, args).await,
    };
    if let Some(t) = tracing {
        // Flushing blocks on the exporter's thread, which needs this runtime's workers free.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    result
}

/// One banner line on stdout. A reader that went away (a closed pipe: a script that read the
/// line it wanted and closed its end) must not stop the node, as `println!` would by panicking.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn run_role(role: Role, settings: Settings) -> Result<(), CommandError> {
    let node = settings.node_id.clone();
    let app = Application::build(role, settings).await?;
    let addr = app.local_addr().map_err(CommandError::Serve)?;
    // Scripts and tests wait for this exact line on stdout.
    say(&format!("listening on http://{addr}"));
    if let Some(admin) = app.admin_addr() {
        say(&format!("admin listening on http://{admin}"));
    }
    for line in &app.banner {
        say(line);
    }
    if let Some(demo) = &app.dashboard {
        // A fragment never reaches the server: the key stays out of every log.
        let key = demo
            .as_ref()
            .map(|k| format!("#key={k}"))
            .unwrap_or_default();
        say(&format!(
            "dashboard: http://localhost:{}/{key}",
            addr.port()
        ));
    }
    tracing::info!(role = role.as_str(), node = %node, %addr, "herald started");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    app.run(rx).await.map_err(CommandError::Serve)?;
    tracing::info!("herald stopped");
    Ok(())
}

fn database_url(settings: &Settings) -> Result<&str, CommandError> {
    settings.database_url.as_deref().ok_or_else(|| {
        CommandError::Usage("HERALD_DATABASE_URL: expected a postgres:// URL (a standalone node without one keeps keys in memory: create them there with POST /v1/keys)".to_owned())
    })
}

/// How long `migrate` and `keys` wait for PostgreSQL to answer.
const DATABASE_DEADLINE: Duration = Duration::from_secs(10);

/// Connects once before any work, so a dead or missing database is reported as such, naming
/// the variable (the pool's own error says only "Error occurred while creating a new object").
async fn check_database(url: &str, tls: &ClientTls) -> Result<(), CommandError> {
    match tokio::time::timeout(DATABASE_DEADLINE, herald_store::probe(url, tls)).await {
        Err(_) => Err(database_error(
            url,
            "cannot connect",
            Cause::from(format!(
                "no answer within {} s",
                DATABASE_DEADLINE.as_secs()
            )),
        )),
        Ok(Err(ProbeError::Postgres(e))) => Err(database_error(
            url,
            "cannot connect",
            Cause::from(describe(&e)),
        )),
        Ok(Err(ProbeError::Invalid(e))) => {
            Err(database_error(url, "cannot connect", Cause::from(e)))
        }
        Ok(Ok(())) => Ok(()),
    }
}

/// The server's own words when it answered (e.g. `database "herald" does not exist`), else
/// every cause (e.g. `error connecting to server: Connection refused (os error 111)`).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let hint = if db.code() == &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME {
            " (create it first, e.g. `createdb`, or point HERALD_DATABASE_URL at one that exists)"
        } else {
            ""
        };
        return format!("{}{hint}", db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn database_error(url: &str, what: &'static str, cause: Cause) -> CommandError {
    CommandError::Database {
        what,
        url: without_userinfo(url),
        cause,
    }
}

fn store_failed(url: &str, what: &'static str, e: StoreError) -> CommandError {
    database_error(url, what, Cause::new(e))
}

async fn keys(settings: &Settings, command: KeysCommand) -> Result<(), CommandError> {
    let url = database_url(settings)?;
    check_database(url, &settings.tls).await?;
    // Idempotent, and a fresh database needs the tables before the first key.
    herald_store::migrate(url, &settings.tls)
        .await
        .map_err(|e| store_failed(url, "migrations failed", e))?;
    let store = PostgresStore::connect(url, 1, &settings.tls)
        .map_err(|e| store_failed(url, "cannot connect", e))?;
    let (args, hash, raw) = match command {
        KeysCommand::Create(args) => {
            let raw = RawKey::generate();
            let hash = raw.hash();
            (args, hash, Some(raw))
        }
        KeysCommand::Import { key, hash } => (
            key,
            KeyHash::parse(&hash).map_err(|e| format!("--hash: {e}"))?,
            None,
        ),
    };
    let key = spec(&args, hash)?.build()?;
    if store.key_by_id(key.id).await?.is_some() {
        return Err(CommandError::KeyExists(key.id));
    }
    store.put_key(&key).await?;
    eprintln!("stored virtual key {} ({})", key.id, key.name);
    if let Some(raw) = raw {
        // stdout carries exactly the raw key.
        println!("{}", raw.expose());
    }
    Ok(())
}

fn spec(args: &KeyArgs, hash: KeyHash) -> Result<KeySpec<'_>, String> {
    let budget = args
        .budget
        .as_deref()
        .map(|b| Budget::parse(b).map_err(|e| format!("--budget: {e}")))
        .transpose()?;
    let thresholds = args
        .thresholds
        .as_deref()
        .map(|t| {
            herald_domain::thresholds::Thresholds::parse(t)
                .map(|t| t.as_slice().to_vec())
                .map_err(|e| format!("--thresholds: {e}"))
        })
        .transpose()?;
    Ok(KeySpec {
        id: KeyId::new(args.id).map_err(|e| format!("--id: {e}"))?,
        name: &args.name,
        hash,
        budget,
        period: args.period.as_deref(),
        admin: args.admin,
        thresholds,
        expires_at: args.expires_at.as_deref(),
        spike_alerts: args.spike_alerts,
    })
}

async fn publish(settings: &Settings, args: PublishArgs) -> Result<(), CommandError> {
    let url = settings.amqp_url.as_deref().ok_or_else(|| {
        CommandError::Usage("HERALD_AMQP_URL: expected an amqp:// URL to publish to".into())
    })?;
    let body: serde_json::Value =
        serde_json::from_str(&args.json).map_err(|e| format!("--json: not valid JSON: {e}"))?;
    let envelope = match args.envelope.to_ascii_lowercase().as_str() {
        "cloudevents" => EnvelopeKind::CloudEvents,
        "masstransit" => EnvelopeKind::MassTransit,
        other => {
            return Err(CommandError::Usage(format!(
                "--envelope: expected cloudevents or masstransit, got {other:?}"
            )));
        }
    };
    let id = args
        .id
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    amqp::publish_event(
        url,
        &settings.amqp_queue,
        &args.event_type,
        &body,
        &id,
        envelope,
        &settings.tls,
    )
    .await?;
    eprintln!("published {} {id}", args.event_type);
    Ok(())
}
