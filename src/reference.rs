//! The table of docs/configuration.md, generated from the command line's declarations (every
//! subcommand's options and the environment-only variables); `tests/configuration_docs.rs`
//! checks the file against it.
use crate::configuration::ENV_ONLY;
use clap::Arg;

pub const REFERENCE_BEGIN: &str = "<!-- BEGIN generated from src/configuration.rs: regenerate with `HERALD_REGENERATE_DOCS=1 cargo test --test configuration_docs generate` -->";
pub const REFERENCE_END: &str = "<!-- END generated -->";

/// One row of the reference table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceRow {
    pub variable: String,
    /// `None` for a variable that is read from the environment only.
    pub flag: Option<String>,
    /// Per subcommand, in the order of [`crate::cli::LEAF_COMMANDS`].
    pub defaults: Vec<(String, Option<String>)>,
    pub help: String,
}

impl ReferenceRow {
    pub fn commands(&self) -> Vec<&str> {
        self.defaults.iter().map(|(c, _)| c.as_str()).collect()
    }
}

/// Every variable, from the command line's declarations and [`ENV_ONLY`].
pub fn reference_rows() -> Result<Vec<ReferenceRow>, String> {
    let cmd = crate::cli::command();
    let mut rows: Vec<ReferenceRow> = Vec::new();
    for path in crate::cli::LEAF_COMMANDS {
        let mut leaf = &cmd;
        for name in *path {
            leaf = leaf
                .find_subcommand(name)
                .ok_or_else(|| format!("no subcommand {name}"))?;
        }
        let command = path.first().copied().unwrap_or("standalone");
        for arg in leaf.get_arguments() {
            let Some(var) = arg.get_env() else { continue };
            let var = var.to_string_lossy().into_owned();
            let flag = arg
                .get_long()
                .map(|l| match arg.get_value_names() {
                    // As clap shows a value that may be left out (`--migrate` alone).
                    Some([v, ..]) if arg.get_num_args().is_some_and(|n| n.min_values() == 0) => {
                        format!("--{l} [<{v}>]")
                    }
                    Some([v, ..]) => format!("--{l} <{v}>"),
                    _ => format!("--{l}"),
                })
                .ok_or_else(|| format!("{var} has no flag"))?;
            let help = arg_help(arg);
            let default = match arg.get_default_values() {
                [] => None,
                vs => Some(
                    vs.iter()
                        .map(|v| v.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            };
            match rows.iter_mut().find(|r| r.variable == var) {
                Some(row) => {
                    if row.flag.as_deref() != Some(flag.as_str()) || row.help != help {
                        return Err(format!(
                            "{var} is declared differently on `{command}`: one declaration per variable"
                        ));
                    }
                    if !row.defaults.iter().any(|(c, _)| c == command) {
                        row.defaults.push((command.to_owned(), default));
                    }
                }
                None => rows.push(ReferenceRow {
                    variable: var,
                    flag: Some(flag),
                    defaults: vec![(command.to_owned(), default)],
                    help,
                }),
            }
        }
    }
    for v in ENV_ONLY {
        rows.push(ReferenceRow {
            variable: v.name.to_owned(),
            flag: None,
            defaults: v
                .commands
                .iter()
                .map(|c| ((*c).to_owned(), Some(v.default.to_owned())))
                .collect(),
            help: v.help.to_owned(),
        });
    }
    Ok(rows)
}

/// The help text of an option as `--help` shows it, on one line.
pub fn arg_help(arg: &Arg) -> String {
    let text = arg
        .get_long_help()
        .or(arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The generated part of docs/configuration.md, markers included.
pub fn reference_markdown() -> Result<String, String> {
    let mut out = format!(
        "{REFERENCE_BEGIN}\n\n| variable | flag | default | read by | meaning |\n|---|---|---|---|---|\n"
    );
    for row in reference_rows()? {
        let flag = row
            .flag
            .as_deref()
            .map_or("—".to_owned(), |f| format!("`{f}`"));
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            row.variable,
            flag,
            markdown_defaults(&row),
            row.commands().join(", "),
            row.help.replace('|', "\\|")
        ));
    }
    out.push('\n');
    out.push_str(REFERENCE_END);
    Ok(out)
}

/// `x`, or `x`; `y` for a, b when subcommands differ.
pub(crate) fn markdown_defaults(row: &ReferenceRow) -> String {
    let show = |d: &Option<String>| match (d, row.flag.is_some()) {
        (None, _) => "unset".to_owned(),
        (Some(d), true) => format!("`{d}`"),
        (Some(d), false) => d.clone(),
    };
    let mut distinct: Vec<&Option<String>> = Vec::new();
    for (_, d) in &row.defaults {
        if !distinct.contains(&d) {
            distinct.push(d);
        }
    }
    let Some((first, others)) = distinct.split_first() else {
        return "unset".to_owned();
    };
    let mut out = show(first);
    for d in others {
        let commands: Vec<&str> = row
            .defaults
            .iter()
            .filter(|(_, x)| x == *d)
            .map(|(c, _)| c.as_str())
            .collect();
        out.push_str(&format!("; {} for {}", show(d), commands.join(", ")));
    }
    out
}
