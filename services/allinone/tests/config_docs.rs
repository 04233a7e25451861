//! Every environment variable that a binary reads is documented in
//! README.md, the one place an operator looks. The variables are found
//! where the code names them: string literals in the services' and crates'
//! sources.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

fn rust_sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// `"FILAMENT_…"`, `"DATABASE_URL"` and `"REDIS_URL"` literals.
fn variables_named_in(source: &str) -> impl Iterator<Item = &str> {
    source.split('"').skip(1).step_by(2).filter(|literal| {
        let is_name = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        is_name
            && (literal.starts_with("FILAMENT_")
                || *literal == "DATABASE_URL"
                || *literal == "REDIS_URL")
    })
}

#[test]
fn every_variable_the_code_reads_is_in_the_readme() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut sources = Vec::new();
    for top in ["services", "crates"] {
        let Ok(entries) = std::fs::read_dir(root.join(top)) else {
            continue;
        };
        for entry in entries.flatten() {
            rust_sources(&entry.path().join("src"), &mut sources);
        }
    }
    let mut variables = BTreeSet::new();
    for path in &sources {
        let source = std::fs::read_to_string(path).expect("source");
        variables.extend(variables_named_in(&source).map(str::to_owned));
    }
    assert!(
        variables.len() > 40,
        "the scan found too few variables to be looking in the right place: {variables:?}"
    );
    let missing: Vec<_> = variables
        .iter()
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but not documented in README.md: {missing:?}"
    );
}
