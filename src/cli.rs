//! The command line (docs/configuration.md).
use crate::configuration::Overrides;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time notifications for an LLM API gateway: RabbitMQ in, SignalR WebSockets out."
)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and serve in one process (the default). With no configuration it needs no other service.
    Standalone,
    /// AMQP consumer role only.
    Consume,
    /// Gateway node role only.
    Serve,
    /// Apply migrations/ to HERALD_DATABASE_URL and exit.
    Migrate,
    /// Manage virtual keys in HERALD_DATABASE_URL.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Publish one event to the bus (HERALD_AMQP_URL).
    Publish(PublishArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Store a new virtual key; prints exactly the raw key and a newline.
    Create(KeyArgs),
    /// Store a key known only by its SHA-256 hash.
    Import {
        #[command(flatten)]
        key: KeyArgs,
        /// SHA-256 of the raw key, 64 hex characters.
        #[arg(long)]
        hash: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[arg(long)]
    pub id: i64,
    #[arg(long, default_value = "")]
    pub name: String,
    /// Budget in the gateway's currency, e.g. 25.00.
    #[arg(long)]
    pub budget: Option<String>,
    /// total, daily or monthly.
    #[arg(long)]
    pub period: Option<String>,
    /// May open the admin hub.
    #[arg(long)]
    pub admin: bool,
    /// Alert thresholds for this key, e.g. 80,100 (default: HERALD_BUDGET_THRESHOLDS).
    #[arg(long)]
    pub thresholds: Option<String>,
    /// RFC 3339 expiry time.
    #[arg(long)]
    pub expires_at: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Event type, e.g. SpendUpdated.
    pub event_type: String,
    /// The event body as JSON.
    #[arg(long)]
    pub json: String,
    /// Event id (default: random).
    #[arg(long)]
    pub id: Option<String>,
    /// cloudevents (to herald's topic exchange) or masstransit (to the type's fanout exchange).
    #[arg(long, default_value = "cloudevents")]
    pub envelope: String,
}
