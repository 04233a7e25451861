//! The api's import rules, checked on its source: the adapters (`http/`,
//! `grpc.rs`) are siblings over `domain/`, so neither calls the other, the
//! domain calls neither, and the store sits below all three. A `use` that
//! breaks a rule fails here with the file and line, before it grows into a
//! cycle nobody can untangle.
//!
//! Comments are skipped (a module header may name the module it is not
//! allowed to import); a string literal naming a module would still count,
//! which is the safe side.

use std::fs;
use std::path::{Path, PathBuf};

/// A rule: the files it covers, and the paths they must not mention.
struct Rule {
    covers: fn(&str) -> bool,
    forbidden: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        covers: |file| file.starts_with("domain/"),
        forbidden: &["crate::http", "crate::grpc"],
    },
    Rule {
        covers: |file| file.starts_with("store/"),
        forbidden: &["crate::http", "crate::grpc", "crate::domain"],
    },
    Rule {
        covers: |file| file == "grpc.rs",
        forbidden: &["crate::http"],
    },
];

#[test]
fn adapters_domain_and_store_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for path in rust_files(&src) {
        let file = relative(&src, &path);
        let rules: Vec<&Rule> = RULES.iter().filter(|rule| (rule.covers)(&file)).collect();
        if rules.is_empty() {
            continue;
        }
        let text = fs::read_to_string(&path).expect("readable source file");
        for (number, line) in code_lines(&text) {
            for forbidden in rules.iter().flat_map(|rule| rule.forbidden) {
                if mentions(line, forbidden) {
                    broken.push(format!("{file}:{number}: {}", line.trim()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_scan_sees_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<String> = rust_files(&src)
        .iter()
        .map(|path| relative(&src, path))
        .collect();
    for expected in [
        "grpc.rs",
        "domain/mod.rs",
        "domain/messages.rs",
        "store/mod.rs",
    ] {
        assert!(files.iter().any(|file| file == expected), "{expected}");
    }
    assert!(mentions("use crate::http::x;", "crate::http"));
    assert!(!mentions("use crate::https;", "crate::http"));
    assert!(mentions("use crate::domain::parse_id;", "crate::domain"));
    assert_eq!(code_lines("// crate::http\nx // crate::grpc\n").count(), 1);
}

/// Whether `line` names `module` or something in it.
fn mentions(line: &str, module: &str) -> bool {
    let mut rest = line;
    while let Some(at) = rest.find(module) {
        let after = &rest[at + module.len()..];
        let next = after.chars().next();
        if !next.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return true;
        }
        rest = after;
    }
    false
}

/// The lines of `text` with their 1-based numbers, comments removed, and
/// lines that were only a comment dropped.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let code = line.split_once("//").map_or(line, |(code, _)| code);
        (!code.trim().is_empty()).then_some((index + 1, code))
    })
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `path` under `src`, with `/` separators whatever the platform.
fn relative(src: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(src).expect("a file under src");
    relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
