//! What each subcommand does.
use crate::cli::{Cli, Command, KeyArgs, KeysCommand, PublishArgs};
use crate::configuration::{LogFormat, Settings};
use crate::keys::KeySpec;
use crate::startup::{Application, Role, shutdown_signal};
use crate::telemetry;
use herald_domain::{KeyHash, KeyId, RawKey};
use herald_ingest::amqp::{self, EnvelopeKind};
use herald_store::{PostgresStore, Store};
use rust_decimal::Decimal;
use std::str::FromStr;
use tokio::sync::watch;

pub async fn run(cli: Cli) -> Result<(), String> {
    let settings = Settings::from_process(&cli.overrides).map_err(|e| e.to_string())?;
    let command = cli.command.unwrap_or(Command::Standalone);
    let role = match command {
        Command::Standalone => Some(Role::Standalone),
        Command::Consume => Some(Role::Consume),
        Command::Serve => Some(Role::Serve),
        _ => None,
    };
    let default_format = if matches!(role, Some(Role::Consume | Role::Serve)) {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    // Only the serving roles make spans; the CLI commands do not export.
    let tracing = telemetry::init(
        settings.log_format.unwrap_or(default_format),
        &settings.node_id,
        role.is_some(),
    )?;
    let result = match (role, command) {
        (Some(role), _) => run_role(role, settings).await,
        (None, Command::Migrate) => {
            let url = database_url(&settings)?;
            let applied = herald_store::migrate(url)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("migrations applied: {applied:?}");
            Ok(())
        }
        (None, Command::Keys { command }) => keys(&settings, command).await,
        (None, Command::Publish(args)) => publish(&settings, args).await,
        (None, _) => Err("unreachable command".into()),
    };
    if let Some(t) = tracing {
        // Flushing blocks on the exporter's thread, which needs this runtime's workers free.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    result
}

async fn run_role(role: Role, settings: Settings) -> Result<(), String> {
    let node = settings.node_id.clone();
    let app = Application::build(role, settings)
        .await
        .map_err(|e| e.to_string())?;
    let addr = app.local_addr().map_err(|e| e.to_string())?;
    // Scripts and tests wait for this exact line on stdout.
    println!("listening on http://{addr}");
    for line in &app.banner {
        println!("{line}");
    }
    tracing::info!(role = role.as_str(), node = %node, %addr, "herald started");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    app.run(rx).await.map_err(|e| e.to_string())?;
    tracing::info!("herald stopped");
    Ok(())
}

fn database_url(settings: &Settings) -> Result<&str, String> {
    settings.database_url.as_deref().ok_or_else(|| {
        "HERALD_DATABASE_URL: expected a postgres:// URL (a standalone node without one keeps keys in memory: create them there with POST /v1/keys)".to_owned()
    })
}

async fn keys(settings: &Settings, command: KeysCommand) -> Result<(), String> {
    let url = database_url(settings)?;
    // Idempotent, and a fresh database needs the tables before the first key.
    herald_store::migrate(url)
        .await
        .map_err(|e| e.to_string())?;
    let store = PostgresStore::connect(url, 1).map_err(|e| e.to_string())?;
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
    if store
        .key_by_id(key.id)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err(format!("key {} already exists", key.id));
    }
    store.put_key(&key).await.map_err(|e| e.to_string())?;
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
        .map(|b| {
            Decimal::from_str_exact(b.trim())
                .or_else(|_| Decimal::from_str(b.trim()))
                .map_err(|_| format!("--budget: expected a decimal amount, got {b:?}"))
        })
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
    })
}

async fn publish(settings: &Settings, args: PublishArgs) -> Result<(), String> {
    let url = settings
        .amqp_url
        .as_deref()
        .ok_or("HERALD_AMQP_URL: expected an amqp:// URL to publish to")?;
    let body: serde_json::Value =
        serde_json::from_str(&args.json).map_err(|e| format!("--json: not valid JSON: {e}"))?;
    let envelope = match args.envelope.to_ascii_lowercase().as_str() {
        "cloudevents" => EnvelopeKind::CloudEvents,
        "masstransit" => EnvelopeKind::MassTransit,
        other => {
            return Err(format!(
                "--envelope: expected cloudevents or masstransit, got {other:?}"
            ));
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
    )
    .await
    .map_err(|e| e.to_string())?;
    eprintln!("published {} {id}", args.event_type);
    Ok(())
}
