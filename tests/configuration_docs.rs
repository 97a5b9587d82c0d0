//! docs/configuration.md, `herald --help` and every subcommand's `--help` agree: the docs'
//! table is what src/configuration.rs generates, and each row matches, option by option, what
//! the real binary prints for each subcommand (flag, variable, default and text), in both
//! directions. Regenerate the table with
//! `HERALD_REGENERATE_DOCS=1 cargo test --test configuration_docs generate`.
use herald::reference::{REFERENCE_BEGIN, REFERENCE_END, reference_markdown};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const DOC: &str = "docs/configuration.md";

/// Each subcommand as typed, and the name docs/configuration.md gives it.
const COMMANDS: &[(&[&str], &str)] = &[
    (&[], "standalone"),
    (&["standalone"], "standalone"),
    (&["consume"], "consume"),
    (&["serve"], "serve"),
    (&["migrate"], "migrate"),
    (&["keys", "create"], "keys"),
    (&["keys", "import"], "keys"),
    (&["publish"], "publish"),
];

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DOC)
}

/// The generated part of the doc, markers included.
fn generated_part(doc: &str) -> &str {
    let begin = doc
        .find(REFERENCE_BEGIN)
        .unwrap_or_else(|| panic!("{DOC} has no line {REFERENCE_BEGIN}"));
    let end = doc[begin..]
        .find(REFERENCE_END)
        .unwrap_or_else(|| panic!("{DOC} has no line {REFERENCE_END}"))
        + begin
        + REFERENCE_END.len();
    &doc[begin..end]
}

#[test]
fn the_table_in_the_docs_is_the_one_the_declarations_generate() {
    let generated = reference_markdown().expect("the declarations make a table");
    let doc = std::fs::read_to_string(doc_path()).expect("docs/configuration.md is readable");
    let current = generated_part(&doc).to_owned();
    if std::env::var_os("HERALD_REGENERATE_DOCS").is_some() && current != generated {
        std::fs::write(doc_path(), doc.replace(&current, &generated)).expect("doc written");
        eprintln!("{DOC}: table regenerated");
        return;
    }
    if current != generated {
        let first = current
            .lines()
            .zip(generated.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("\n  docs:      {a}\n  generated: {b}"))
            .unwrap_or_else(|| "\n  (one has more lines)".into());
        panic!(
            "{DOC} does not match the options declared in src/configuration.rs; first difference:{first}\nregenerate with HERALD_REGENERATE_DOCS=1 cargo test --test configuration_docs generate"
        );
    }
}

/// One row of the docs' table, read from the markdown.
#[derive(Debug)]
struct DocRow {
    variable: String,
    flag: Option<String>,
    /// Per subcommand name: `None` for "unset".
    defaults: BTreeMap<String, Option<String>>,
    meaning: String,
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('`').to_owned()
}

fn doc_rows() -> Vec<DocRow> {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/configuration.md is readable");
    let table = generated_part(&doc);
    let mut rows = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<String> = line
            .replace("\\|", "\u{0}")
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.replace('\u{0}', "|").trim().to_owned())
            .collect();
        assert_eq!(cells.len(), 5, "{DOC}: a row has 5 cells: {line}");
        let commands: Vec<String> = cells[3].split(", ").map(str::to_owned).collect();
        // `x`; `y` for a, b
        let mut parts = cells[2].split("; ");
        let first = parts.next().unwrap_or_default();
        let value = |v: &str| (v != "unset").then(|| unquote(v));
        let mut defaults: BTreeMap<String, Option<String>> =
            commands.iter().map(|c| (c.clone(), value(first))).collect();
        for part in parts {
            let (v, for_commands) = part
                .split_once(" for ")
                .unwrap_or_else(|| panic!("{DOC}: cannot read the default {part:?}"));
            for c in for_commands.split(", ") {
                assert!(
                    defaults.contains_key(c),
                    "{DOC}: {c} is not among {commands:?}"
                );
                defaults.insert(c.to_owned(), value(v));
            }
        }
        rows.push(DocRow {
            variable: unquote(&cells[0]),
            flag: (cells[1] != "—").then(|| unquote(&cells[1])),
            defaults,
            meaning: cells[4].clone(),
        });
    }
    assert!(rows.len() > 10, "{DOC}: the table has rows");
    rows
}

/// One variable as `--help` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shown {
    flag: Option<String>,
    default: Option<String>,
    text: String,
}

/// The variables in the real binary's `--help` of `args`: options with `[env: …]`, and the
/// section of variables read from the environment only.
fn help_of(args: &[&str]) -> BTreeMap<String, Shown> {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("herald runs");
    assert!(out.status.success(), "herald {args:?} --help failed");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut shown = BTreeMap::new();
    let mut current: Option<(Option<String>, Shown)> = None;
    // Options without a variable (`--help`, `--id`) are not configuration.
    let mut finish = |current: &mut Option<(Option<String>, Shown)>| {
        if let Some((Some(var), mut s)) = current.take() {
            s.text = s.text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(shown.insert(var.clone(), s).is_none(), "{var} shown twice");
        }
    };
    let mut env_only = false;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 && !text.is_empty() {
            finish(&mut current);
            env_only = text == "Read from the environment only:";
            continue;
        }
        if text.is_empty() {
            continue;
        }
        if indent <= 6 {
            finish(&mut current);
            if env_only {
                current = Some((Some(text.to_owned()), Shown::default()));
            } else if let Some(long) = text.find("--") {
                // `-h, --help` or `--listen <HOST:PORT>`.
                let flag = Some(text[long..].to_owned());
                current = Some((
                    None,
                    Shown {
                        flag,
                        ..Shown::default()
                    },
                ));
            }
            continue;
        }
        let Some((var, s)) = current.as_mut() else {
            continue;
        };
        if let Some(v) = text
            .strip_prefix("[env: ")
            .and_then(|t| t.strip_suffix(']'))
        {
            *var = Some(v.to_owned());
        } else if let Some(d) = text
            .strip_prefix("[default: ")
            .and_then(|t| t.strip_suffix(']'))
        {
            s.default = Some(d.to_owned());
        } else if !text.starts_with("[possible values: ") {
            s.text.push(' ');
            s.text.push_str(text);
        }
    }
    finish(&mut current);
    shown
}

fn typed(args: &[&str]) -> String {
    let mut words = vec!["herald"];
    words.extend(args);
    words.push("--help");
    words.join(" ")
}

#[test]
fn every_subcommands_help_agrees_with_the_docs() {
    let rows = doc_rows();
    for (args, name) in COMMANDS {
        let shown = help_of(args);
        let mut expected = BTreeMap::new();
        for row in rows.iter().filter(|r| r.defaults.contains_key(*name)) {
            let default = row.defaults[*name].clone();
            expected.insert(
                row.variable.clone(),
                Shown {
                    flag: row.flag.clone(),
                    default,
                    text: row.meaning.clone(),
                },
            );
        }
        for (var, doc) in &expected {
            let help = shown.get(var).unwrap_or_else(|| {
                panic!(
                    "`herald {} --help` does not show {var}, which {DOC} lists for {name}",
                    args.join(" ")
                )
            });
            assert_eq!(
                help,
                doc,
                "{var}: `{}` (left) and {DOC} (right) disagree",
                typed(args)
            );
        }
        for var in shown.keys() {
            assert!(
                expected.contains_key(var),
                "`{}` shows {var}, which {DOC} does not list for {name}",
                typed(args)
            );
        }
    }
}

#[test]
fn secrets_are_not_options() {
    let rows = doc_rows();
    for secret in ["HERALD_MASTER_KEY", "HERALD_CONNECTION_SECRET"] {
        let row = rows
            .iter()
            .find(|r| r.variable == secret)
            .unwrap_or_else(|| panic!("{DOC} lists {secret}"));
        assert_eq!(row.flag, None, "{secret} has no flag");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--master-key", "0123456789abcdef0123"])
        .env_clear()
        .output()
        .expect("herald runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--master-key'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
