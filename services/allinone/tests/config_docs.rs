//! Every environment variable that a binary reads is documented in
//! README.md, the one place an operator looks, and every variable the
//! Kubernetes manifests set is one the code reads (a misspelt name there
//! would be silently ignored). The variables are found where the code names
//! them: string literals in the services' and crates' sources.

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

/// Every variable named in the sources.
fn variables_the_code_reads(root: &Path) -> BTreeSet<String> {
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
    variables
}

#[test]
fn every_variable_the_code_reads_is_in_the_readme() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let variables = variables_the_code_reads(&root);
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

/// The variable names a manifest sets: `- name: X` / `{name: X, …}` under
/// `env`, `key: X` of a secret reference, and the keys of a ConfigMap's
/// `data` that pods take with `envFrom`.
fn variables_set_in(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_config_data = false;
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        if !line.starts_with(' ') {
            in_config_data = trimmed == "data:";
        }
        let candidates = [
            trimmed.strip_prefix("- name: "),
            trimmed.strip_prefix("- {name: "),
            trimmed.split("key: ").nth(1),
            in_config_data.then(|| trimmed.split(':').next()).flatten(),
        ];
        for candidate in candidates.into_iter().flatten() {
            let name: String = candidate
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.contains('_') {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_variable_the_manifests_set_is_read_by_the_code() {
    let root = workspace_root();
    let read = variables_the_code_reads(&root);
    let mut set = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("k8s")).expect("k8s/").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let manifest = std::fs::read_to_string(&path).expect("manifest");
            set.extend(variables_set_in(&manifest));
        }
    }
    assert!(
        set.contains("FILAMENT_TRUSTED_PROXY_CIDRS")
            && set.contains("FILAMENT_GATEWAY_ADMIN_ADDR")
            && set.contains("REDIS_URL"),
        "the scan does not see what the manifests set: {set:?}"
    );
    let unread: Vec<_> = set.iter().filter(|name| !read.contains(*name)).collect();
    assert!(
        unread.is_empty(),
        "set in k8s/ but read by no binary: {unread:?}"
    );
}
