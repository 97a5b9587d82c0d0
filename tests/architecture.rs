//! The layout rules of docs/architecture.md, checked on the source tree (no build of the code
//! under test is involved, so this runs in milliseconds):
//! - no two source files import each other, directly or through a longer cycle (`use crate::…`,
//!   `use super::…` and paths written inline count; a parent declaring `mod child;` does not);
//! - ingest and gateway never depend on each other;
//! - no source file's code (unit tests at its end excluded) is over 500 lines unless its module
//!   comment says why, in a line starting `//! Long because`.
//!
//! `cargo run`-free and dependency-free on purpose: it reads files as text.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;

/// Every crate root under the workspace: `src/` of the binary and of each library.
fn crate_roots() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![root.join("src")];
    for dir in ["crates", "bench"] {
        let base = root.join(dir);
        if dir == "bench" {
            roots.push(base.join("src"));
            continue;
        }
        let mut crates: Vec<PathBuf> = std::fs::read_dir(&base)
            .expect("crates/ is readable")
            .map(|e| e.expect("a directory entry").path().join("src"))
            .filter(|p| p.is_dir())
            .collect();
        crates.sort();
        roots.extend(crates);
    }
    roots
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("source directory is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file before its unit tests (`#[cfg(test)]` followed by `mod tests`).
fn code_of(text: &str) -> &str {
    let mut offset = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if (line.trim() == "#[cfg(test)]" || line.trim().starts_with("#[cfg(all(test"))
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// Module path (below the crate root) of a file: `a/b.rs` and `a/b/mod.rs` are `a::b`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).expect("file below its root");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Strips comments and string literals, so paths inside them do not count.
fn strip(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for n in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if n == '\\' {
                        escaped = true;
                    } else if n == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path the code names from `crate::` or `super::`, with grouped imports expanded
/// (`use crate::{a::B, c}` names `a::B` and `c`). `super::` is resolved against `module`.
fn referenced_paths(code: &str, module: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let code = strip(code);
    let bytes: Vec<char> = code.chars().collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let prev_ident = i > 0 && (bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let four: String = bytes[i..bytes.len().min(i + 4)].iter().collect();
        let (start, base): (usize, Vec<String>) = if !prev_ident
            && four == "use "
            && !rest.starts_with("use cra")
            && !rest.starts_with("use sup")
        {
            // `use child::X` (or `use self::child::X`): relative to this module. A path into
            // another crate resolves to no module of this one and is ignored.
            (i + 4, module.to_vec())
        } else if !prev_ident && rest.starts_with("crate::") {
            (i + 7, Vec::new())
        } else if !prev_ident && rest.starts_with("super::") {
            // In `a/b.rs` (module a::b) super is `a`; in `a/b/mod.rs` it is also `a`.
            let mut parent = module.to_vec();
            parent.pop();
            let mut j = i + 7;
            // `super::super::`
            loop {
                let more: String = bytes[j..bytes.len().min(j + 7)].iter().collect();
                if more == "super::" {
                    parent.pop();
                    j += 7;
                } else {
                    break;
                }
            }
            let _ = is_mod_file;
            (j, parent)
        } else {
            i += 1;
            continue;
        };
        let (end, found) = parse_tree(&bytes, start, base);
        paths.extend(found);
        i = end.max(i + 1);
    }
    paths
}

/// Parses `a::b::C` or `a::{b, c::D}` from `start`, prefixing `base`.
fn parse_tree(b: &[char], mut i: usize, base: Vec<String>) -> (usize, Vec<Vec<String>>) {
    let mut path = base;
    loop {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == '{' {
            let mut out = Vec::new();
            i += 1;
            loop {
                let (end, found) = parse_tree(b, i, path.clone());
                out.extend(found);
                i = end;
                while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == '}' {
                    return (i + 1, out);
                }
            }
        }
        let s = i;
        while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
            i += 1;
        }
        if s == i {
            return (i, vec![path]);
        }
        let ident: String = b[s..i].iter().collect();
        if ident != "self" {
            path.push(ident);
        }
        if i + 1 < b.len() && b[i] == ':' && b[i + 1] == ':' {
            i += 2;
        } else {
            return (i, vec![path]);
        }
    }
}

struct Crate {
    /// Module path → file.
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    /// The file of the longest module prefix of `path`.
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.modules.get(&path[..n]))
    }
}

fn relative(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn no_two_source_files_import_each_other() {
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for root in crate_roots() {
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let krate = Crate {
            modules: files
                .iter()
                .map(|f| (module_of(&root, f), f.clone()))
                .collect(),
        };
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable source");
            let module = module_of(&root, file);
            let is_mod = file.file_name().is_some_and(|n| n == "mod.rs");
            for path in referenced_paths(code_of(&text), &module, is_mod) {
                if let Some(target) = krate.file_of(&path)
                    && target != file
                {
                    edges
                        .entry(file.clone())
                        .or_default()
                        .insert(target.clone());
                }
            }
        }
    }
    // Depth-first search for a cycle; report every file pair that is part of one.
    let mut cycles = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if reaches(&edges, to, from, &mut BTreeSet::new()) {
                cycles.push(format!("{} -> {}", relative(from), relative(to)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "source files that import each other (directly or in a cycle):\n{}",
        cycles.join("\n")
    );
}

fn reaches(
    edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    from: &PathBuf,
    to: &PathBuf,
    seen: &mut BTreeSet<PathBuf>,
) -> bool {
    if from == to {
        return true;
    }
    if !seen.insert(from.clone()) {
        return false;
    }
    edges
        .get(from)
        .is_some_and(|next| next.iter().any(|n| reaches(edges, n, to, seen)))
}

#[test]
fn no_source_file_is_long_without_saying_why() {
    let mut long = Vec::new();
    for root in crate_roots() {
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            let lines = code_of(&text).lines().count();
            let says_why = text.lines().any(|l| l.starts_with("//! Long because"));
            if lines > MAX_LINES && !says_why {
                long.push(format!("{} ({lines} lines)", relative(&file)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines of code without a `//! Long because` line:\n{}",
        long.join("\n")
    );
}

#[test]
fn ingest_and_gateway_never_depend_on_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (a, b) in [("ingest", "gateway"), ("gateway", "ingest")] {
        let manifest = std::fs::read_to_string(root.join("crates").join(a).join("Cargo.toml"))
            .expect("manifest");
        assert!(
            !manifest.contains(&format!("herald-{b}")),
            "crates/{a} depends on herald-{b}"
        );
        let mut files = Vec::new();
        rust_files(&root.join("crates").join(a).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable source");
            assert!(
                !text.contains(&format!("herald_{b}")),
                "{} names herald_{b}",
                relative(&f)
            );
        }
    }
}

#[test]
fn the_checker_sees_a_cycle_and_a_grouped_import() {
    // The parser itself: a grouped import expands, `super` resolves against the module.
    let m = vec!["session".to_owned(), "replay".to_owned()];
    let paths = referenced_paths(
        "use super::{Session, FRAME_TARGET};\nuse crate::{a::B, c};\nlet s = \"crate::x\";",
        &m,
        false,
    );
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        ["session::Session", "session::FRAME_TARGET", "a::B", "c"]
    );
    let children = referenced_paths("pub use mailbox::{Mailbox, Received};", &[], false);
    let names: Vec<String> = children.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["mailbox::Mailbox", "mailbox::Received"]);
    let mut edges = BTreeMap::new();
    let (a, b) = (PathBuf::from("a.rs"), PathBuf::from("b.rs"));
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([a.clone()]));
    assert!(reaches(&edges, &b, &a, &mut BTreeSet::new()));
}
