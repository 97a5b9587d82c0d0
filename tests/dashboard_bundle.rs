//! The dashboard embedded in the binary (src/dashboard.rs) is built from clients/js and
//! committed. Its first line names a SHA-256 of the sources it was built from (computed by
//! clients/js/build.mjs as here); a source edit without `npm run build:dashboard` fails this
//! test, in every `cargo test`, without Node. clients/js/test/bundle.test.mjs goes further and
//! rebuilds the bundle with the pinned esbuild, comparing bytes (docs/decisions.md).
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn clients_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// clients/js/build.mjs `sourceFiles()`: the lockfile, and src/ and dashboard/ files ending in
/// .ts, .css or .html, as paths relative to clients/js, sorted.
fn source_files() -> Vec<String> {
    let mut files = vec!["package-lock.json".to_owned()];
    for dir in ["src", "dashboard"] {
        let entries = std::fs::read_dir(clients_js().join(dir))
            .unwrap_or_else(|e| panic!("cannot list clients/js/{dir}: {e}"));
        for entry in entries {
            let name = entry.expect("directory entry").file_name();
            let name = name.to_string_lossy();
            if [".ts", ".css", ".html"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

fn source_hash() -> String {
    let mut h = Sha256::new();
    for f in source_files() {
        h.update(f.as_bytes());
        h.update([0]);
        let bytes = std::fs::read(clients_js().join(&f))
            .unwrap_or_else(|e| panic!("cannot read clients/js/{f}: {e}"));
        h.update(&bytes);
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn embedded_hash(asset: &str) -> &str {
    let first = asset.lines().next().unwrap_or_default();
    first
        .strip_prefix("/* herald dashboard; sources sha256 ")
        .and_then(|r| r.strip_suffix(" */"))
        .unwrap_or_else(|| panic!("the bundle's first line names no source hash: {first:?}"))
}

#[test]
fn committed_dashboard_bundle_matches_its_sources() {
    let expected = source_hash();
    for (name, asset) in [
        ("dashboard.js", herald::dashboard::SCRIPT),
        ("dashboard.css", herald::dashboard::STYLE),
    ] {
        assert_eq!(
            embedded_hash(asset),
            expected,
            "clients/js/dashboard/dist/{name} is stale against its sources: run \
             `cd clients/js && npm ci && npm run build:dashboard` and commit dashboard/dist"
        );
    }
}

#[test]
fn the_page_loads_the_embedded_assets() {
    let html = herald::dashboard::INDEX_HTML;
    assert!(html.contains(r#"src="dashboard/dashboard.js""#), "{html}");
    assert!(html.contains(r#"href="dashboard/dashboard.css""#), "{html}");
    assert!(
        !html.contains("<script>"),
        "no inline script (the page's CSP forbids it)"
    );
}
