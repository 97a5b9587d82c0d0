//! The command line (docs/configuration.md). Options are declared in configuration.rs and
//! placed here on the subcommands that read them.
use crate::configuration::{
    self, AmqpArgs, ConfigError, ConsumerArgs, DatabaseArgs, GatewayArgs, Groups, LogArgs,
    NodeArgs, Overrides, Settings, TlsArgs,
};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::collections::HashMap;
use std::ffi::OsString;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time notifications for an LLM API gateway: RabbitMQ in, SignalR WebSockets out.",
    long_about = "Real-time notifications for an LLM API gateway: RabbitMQ in, SignalR WebSockets out.\n\nWithout a subcommand, runs `standalone` with the options below.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    standalone: StandaloneArgs,
    #[command(subcommand)]
    command: Option<CommandArgs>,
}

#[derive(Subcommand)]
enum CommandArgs {
    /// Consume and serve in one process (the default). With no configuration it needs no other service.
    Standalone(StandaloneArgs),
    /// AMQP consumer role only.
    Consume(ConsumeArgs),
    /// Gateway node role only.
    Serve(ServeArgs),
    /// Apply migrations/ to HERALD_DATABASE_URL and exit.
    Migrate(MigrateArgs),
    /// Manage virtual keys in HERALD_DATABASE_URL.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Publish one event to the bus (HERALD_AMQP_URL).
    Publish(PublishArgs),
}

/// A consumer and a gateway in one process.
#[derive(Args)]
struct StandaloneArgs {
    #[command(flatten)]
    consume: ConsumeArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(Args)]
struct ConsumeArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
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

#[derive(Args)]
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
    /// Alert thresholds for this key, e.g. 80,100 (unset: HERALD_BUDGET_THRESHOLDS of the consumer).
    #[arg(long)]
    pub thresholds: Option<String>,
    /// RFC 3339 expiry time.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Spike alerts for this key (off by default; docs/events.md, "Spend intelligence").
    #[arg(long)]
    pub spike_alerts: bool,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
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
    #[command(flatten)]
    amqp: AmqpArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// What to do, its options having gone into [`Invocation::settings`].
pub enum Command {
    Standalone,
    Consume,
    Serve,
    Migrate,
    Keys(KeysCommand),
    Publish(PublishArgs),
}

/// A parsed command line with its settings.
pub struct Invocation {
    pub command: Command,
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Help, version, or a mistake on the command line: clap prints it (`exit`).
    #[error("{0}")]
    Usage(clap::Error),
    /// A variable that cannot be used.
    #[error("{0}")]
    Config(ConfigError),
}

/// Subcommands whose options docs/configuration.md lists, by their path.
pub const LEAF_COMMANDS: &[&[&str]] = &[
    &["standalone"],
    &["consume"],
    &["serve"],
    &["migrate"],
    &["keys", "create"],
    &["keys", "import"],
    &["publish"],
];

/// The whole command line as `--help` shows it.
pub fn command() -> clap::Command {
    let cmd = map_args(Cli::command(), &|a| a.hide_env_values(true));
    // The only option whose default depends on the subcommand: the production roles log JSON.
    let json = |c: clap::Command| c.mut_arg("log_format", |a| a.default_value("json"));
    let cmd = cmd
        .mut_subcommand("serve", json)
        .mut_subcommand("consume", json);
    // Secrets are not options: the long help lists what each subcommand reads from the
    // environment only.
    let short = "Variables read from the environment only (secrets among them): see --help.";
    let cmd = cmd
        .after_help(short)
        .after_long_help(configuration::env_only_help("standalone"));
    cmd.mut_subcommands(|sub| {
        let name = sub.get_name().to_owned();
        let with_help = |c: clap::Command| {
            c.after_help(short)
                .after_long_help(configuration::env_only_help(&name))
        };
        let sub = with_help(sub);
        sub.mut_subcommands(with_help)
    })
}

fn map_args(cmd: clap::Command, f: &dyn Fn(clap::Arg) -> clap::Arg) -> clap::Command {
    cmd.mut_args(f).mut_subcommands(|s| map_args(s, f))
}

fn mut_path(
    cmd: clap::Command,
    path: &[String],
    f: impl FnOnce(clap::Command) -> clap::Command,
) -> clap::Command {
    match path.split_first() {
        None => f(cmd),
        Some((head, rest)) => cmd.mut_subcommand(head, |s| mut_path(s, rest, f)),
    }
}

/// Every variable Herald reads.
pub fn variable_names() -> Vec<String> {
    fn collect(cmd: &clap::Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(var) = arg.get_env().and_then(|v| v.to_str())
                && !out.iter().any(|o| o == var)
            {
                out.push(var.to_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, out);
        }
    }
    let mut out = Vec::new();
    collect(&command(), &mut out);
    out.extend(configuration::ENV_ONLY.iter().map(|v| v.name.to_owned()));
    out
}

/// Parses `args` (program name first) with the variables `vars` instead of the process
/// environment: a flag wins over its variable, a variable over the declared default. Only the
/// variables of the chosen subcommand are read, and a bad one is named in the error.
pub fn parse<A, T>(
    args: A,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Invocation, CliError>
where
    A: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // An empty variable counts as unset, as in a shell's `VAR= herald`.
    let vars: HashMap<String, String> = vars
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let full = command();
    // clap would read the process environment itself: parse the flags alone first.
    let bare = map_args(full.clone(), &configuration::without_env);
    // Built (for introspection only), so its arguments show as clap's errors show them.
    let mut built = full.clone();
    built.build();
    let flags_only = match bare.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            // Help shows the variables, so it comes from the full declaration.
            let shown = matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    | clap::error::ErrorKind::DisplayVersion
            );
            let e = if shown {
                full.clone().try_get_matches_from(&args).err().unwrap_or(e)
            } else {
                e
            };
            return Err(CliError::Usage(e));
        }
    };
    let mut path = Vec::new();
    let mut m = &flags_only;
    while let Some((name, sub)) = m.subcommand() {
        path.push(name.to_owned());
        m = sub;
    }
    let mut leaf = &built;
    for name in &path {
        if let Some(sub) = leaf.find_subcommand(name) {
            leaf = sub;
        }
    }
    // The chosen subcommand's variables become its defaults, so flags still win.
    let from_env: Vec<(String, String, String)> = leaf
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_str()?;
            let value = vars.get(var)?;
            Some((
                arg.get_id().to_string(),
                var.to_owned(),
                value.trim().to_owned(),
            ))
        })
        .collect();
    let shown: Vec<(String, String)> = leaf
        .get_arguments()
        .filter_map(|a| Some((a.to_string(), a.get_env()?.to_str()?.to_owned())))
        .collect();
    let values = from_env.clone();
    let with_env = mut_path(bare, &path, move |mut cmd| {
        for (id, _, value) in values {
            cmd = cmd.mut_arg(id, |a| a.default_value(value));
        }
        cmd
    });
    let matches = with_env
        .try_get_matches_from(&args)
        .map_err(|e| env_error(e, &shown, &from_env))?;
    let cli = Cli::from_arg_matches(&matches).map_err(CliError::Usage)?;
    let (command, groups) = match cli.command {
        None => (Command::Standalone, cli.standalone.groups()),
        Some(CommandArgs::Standalone(a)) => (Command::Standalone, a.groups()),
        Some(CommandArgs::Consume(a)) => (Command::Consume, a.groups(None)),
        Some(CommandArgs::Serve(a)) => (
            Command::Serve,
            Groups {
                log: a.log,
                database: Some(a.database),
                tls: Some(a.tls),
                amqp: None,
                consumer: None,
                node: Some(a.node),
                gateway: Some(a.gateway),
            },
        ),
        Some(CommandArgs::Migrate(a)) => {
            (Command::Migrate, database_only(a.log, a.database, a.tls))
        }
        Some(CommandArgs::Keys { command }) => {
            let key = match &command {
                KeysCommand::Create(key) | KeysCommand::Import { key, .. } => key,
            };
            let groups = database_only(key.log.clone(), key.database.clone(), key.tls.clone());
            (Command::Keys(command), groups)
        }
        Some(CommandArgs::Publish(a)) => {
            let groups = Groups {
                log: a.log.clone(),
                database: None,
                tls: Some(a.tls.clone()),
                amqp: Some(a.amqp.clone()),
                consumer: None,
                node: None,
                gateway: None,
            };
            (Command::Publish(a), groups)
        }
    };
    let settings =
        Settings::from_groups(groups, |k| vars.get(k).cloned()).map_err(CliError::Config)?;
    Ok(Invocation { command, settings })
}

impl StandaloneArgs {
    fn groups(self) -> Groups {
        self.consume.groups(Some(self.gateway))
    }
}

impl ConsumeArgs {
    fn groups(self, gateway: Option<GatewayArgs>) -> Groups {
        Groups {
            log: self.log,
            database: Some(self.database),
            tls: Some(self.tls),
            amqp: Some(self.amqp),
            consumer: Some(self.consumer),
            node: Some(self.node),
            gateway,
        }
    }
}

fn database_only(log: LogArgs, database: DatabaseArgs, tls: TlsArgs) -> Groups {
    Groups {
        log,
        database: Some(database),
        tls: Some(tls),
        amqp: None,
        consumer: None,
        node: None,
        gateway: None,
    }
}

/// The flags parsed alone, so a value clap rejects now came from a variable: name it.
fn env_error(
    e: clap::Error,
    shown: &[(String, String)],
    from_env: &[(String, String, String)],
) -> CliError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(a)) => a.clone(),
        _ => return CliError::Usage(e),
    };
    let Some((_, var)) = shown.iter().find(|(a, _)| *a == arg) else {
        return CliError::Usage(e);
    };
    let Some((_, _, value)) = from_env.iter().find(|(_, v, _)| v == var) else {
        return CliError::Usage(e);
    };
    let problem = match e.kind() {
        ErrorKind::ValueValidation => std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_else(|| "expected another value".into()),
        ErrorKind::InvalidValue => {
            let valid = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => v.join(" or "),
                _ => String::from("another value"),
            };
            format!("expected {valid}, got {value:?}")
        }
        _ => return CliError::Usage(e),
    };
    CliError::Config(ConfigError::new(var.clone(), problem))
}

impl Settings {
    /// Settings of `herald standalone` from `flags`, then the variables `env` gives, then the
    /// defaults, without reading the process environment.
    pub fn load(
        flags: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let args = ["herald", "standalone"]
            .into_iter()
            .map(str::to_owned)
            .chain(flags.args.iter().cloned());
        let vars = crate::cli::variable_names()
            .into_iter()
            .filter_map(|name| env(&name).map(|v| (name, v)));
        match crate::cli::parse(args, vars) {
            Ok(invocation) => Ok(invocation.settings),
            Err(crate::cli::CliError::Config(e)) => Err(e),
            Err(crate::cli::CliError::Usage(e)) => Err(ConfigError::new(
                "command line",
                e.render().to_string().trim().to_owned(),
            )),
        }
    }
}
