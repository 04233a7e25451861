//! docs/PROTOCOL.md describes the wire protocol as this repository
//! implements it, and code and docs cite its numbered sections
//! (`PROTOCOL.md §5.3`, or in docs/ a link to `PROTOCOL.md#53-client-events`).
//! These tests scan every text file of the repository — Rust, proto,
//! markdown, SQL, JSON, the TypeScript SDK and the rest — and keep those
//! citations resolvable: a cited section or anchor that PROTOCOL.md does
//! not have fails, and so does a section sign that names no document, or
//! any citation left of the external "contract" the project used to cite.
//! Only what the repository does not hold is skipped: git's own directory,
//! and build output and dependencies (all git-ignored).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PROTOCOL: &str = "docs/PROTOCOL.md";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

/// Directories skipped wherever they are: dependencies and build output.
const SKIPPED_ANYWHERE: [&str; 3] = ["node_modules", "dist", "target"];
/// Directories skipped by path: git's own, local state, and the fuzzer's
/// inputs and outputs (bytes, not text anyone reads).
const SKIPPED_PATHS: [&str; 6] = [
    ".git",
    "data",
    ".schemathesis",
    "services/gateway/fuzz/corpus",
    "services/gateway/fuzz/artifacts",
    "services/gateway/fuzz/coverage",
];

/// The section sign, written as an escape so that this file cites nothing.
const SIGN: char = '\u{a7}';

/// Old citations that can never change: sqlx checksums applied
/// migrations, and a migration whose text changed stops every existing
/// database from starting. PROTOCOL.md's introduction says what each of
/// these sections is now. Each entry is a file and one whole line of it;
/// an entry that no longer matches fails too, so the list stays exact.
const FROZEN: [(&str, &str); 6] = [
    (
        "services/api/migrations/postgres/0003_roles.sql",
        "-- overrides (contract \u{a7}3.5, \u{a7}4). The SQLite twin of this file is",
    ),
    (
        "services/api/migrations/sqlite/0003_roles.sql",
        "-- overrides (contract \u{a7}3.5, \u{a7}4). The Postgres twin of this file is",
    ),
    (
        "services/api/migrations/postgres/0005_moderation.sql",
        "-- \u{a7}3.4). The SQLite twin of this file is ../sqlite/0005_moderation.sql;",
    ),
    (
        "services/api/migrations/sqlite/0005_moderation.sql",
        "-- \u{a7}3.4). The Postgres twin of this file is ../postgres/0005_moderation.sql;",
    ),
    (
        "services/api/migrations/postgres/0008_identity.sql",
        "-- \u{a7}2), so lower() folds them exactly, and the same way on both backends.",
    ),
    (
        "services/api/migrations/sqlite/0008_identity.sql",
        "-- \u{a7}2), so lower() folds them exactly, and the same way on both backends.",
    ),
];

/// Every text file of the repository, by path relative to the root.
fn repository_texts(root: &Path) -> BTreeMap<String, String> {
    let mut texts = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).expect("a readable directory");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                let relative = path.strip_prefix(root).expect("under the root");
                let skipped = SKIPPED_ANYWHERE.contains(&name.as_ref())
                    || SKIPPED_PATHS.iter().any(|skip| relative == Path::new(skip));
                if !skipped {
                    pending.push(path);
                }
                continue;
            }
            // Binary files (images, fixtures) are not UTF-8 and cite nothing.
            if let Ok(text) = String::from_utf8(std::fs::read(&path).expect("a readable file")) {
                let relative = path.strip_prefix(root).expect("under the root");
                texts.insert(relative.to_string_lossy().replace('\\', "/"), text);
            }
        }
    }
    texts
}

/// The section numbers (`5`, `5.3`) and heading anchors of PROTOCOL.md.
struct Protocol {
    sections: BTreeSet<String>,
    anchors: BTreeSet<String>,
}

impl Protocol {
    fn parse(text: &str) -> Self {
        let mut sections = BTreeSet::new();
        let mut anchors = BTreeSet::new();
        for line in text.lines() {
            let Some(title) = line
                .strip_prefix("## ")
                .or_else(|| line.strip_prefix("### "))
            else {
                continue;
            };
            anchors.insert(anchor(title));
            if let Some(number) = section_number(line) {
                assert!(
                    sections.insert(number.clone()),
                    "{PROTOCOL}: section {number} is numbered twice"
                );
            }
        }
        Self { sections, anchors }
    }
}

/// `## 5. The gateway` is section `5`, `### 5.3 Client events` is `5.3`.
fn section_number(line: &str) -> Option<String> {
    let (number, rest) = if let Some(title) = line.strip_prefix("### ") {
        title.split_once(' ')?
    } else {
        let (number, rest) = line.strip_prefix("## ")?.split_once(' ')?;
        (number.strip_suffix('.')?, rest)
    };
    let numeric = number
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    let depth = number.split('.').count();
    let expected = if line.starts_with("### ") { 2 } else { 1 };
    (numeric && depth == expected && !rest.is_empty()).then(|| number.to_owned())
}

/// The anchor GitHub gives a heading: lowercase, punctuation dropped,
/// spaces turned into hyphens.
fn anchor(title: &str) -> String {
    title
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Something a scan found, at a line of a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Finding {
    path: String,
    line: usize,
    what: String,
}

/// What one file cites, and which of its section signs those citations
/// account for (by byte offset).
#[derive(Default)]
struct Cited {
    sections: Vec<(usize, String)>,
    anchors: Vec<(usize, String)>,
    accounted: BTreeSet<usize>,
}

/// The characters that may stand between a document's name and its first
/// section sign: spaces and line breaks, with the comment leaders (`//!`, `///`,
/// `--`, `*`, `#`) of a continued line.
fn skip_gap(text: &str, mut at: usize) -> usize {
    while let Some(c) = text[at..].chars().next() {
        if c.is_whitespace() || matches!(c, '/' | '!' | '*' | '-' | '#') {
            at += c.len_utf8();
        } else {
            break;
        }
    }
    at
}

/// A section number (`5`, `5.3`) starting at `at`, and where it ends.
fn number_at(text: &str, at: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let mut end = at;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end == at {
        return None;
    }
    while end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    Some((text[at..end].to_owned(), end))
}

/// A list of sections starting with the section sign at `at`, as in
/// `PROTOCOL.md §2.6, §2.7`, `PROTOCOL.md §2/§4` or
/// `PROTOCOL.md §5.5 and §5.9`. Records each, and marks its sign accounted.
fn section_list(text: &str, mut at: usize, cited: &mut Cited) {
    loop {
        let Some(rest) = text[at..].strip_prefix(SIGN) else {
            return;
        };
        let sign = at;
        cited.accounted.insert(sign);
        at = text.len() - rest.len();
        let Some((number, end)) = number_at(text, at) else {
            return;
        };
        cited.sections.push((sign, number));
        at = end;
        // The next item of the list, if there is one.
        let after = text[at..].trim_start_matches([' ', ',', '/']);
        let after = after
            .strip_prefix("and ")
            .or_else(|| after.strip_prefix("or "))
            .unwrap_or(after);
        if !after.starts_with(SIGN) {
            return;
        }
        at = text.len() - after.len();
    }
}

/// Every citation of PROTOCOL.md in `text`. In PROTOCOL.md itself a bare
/// section sign cites the document itself.
fn protocol_citations(text: &str, is_protocol: bool) -> Cited {
    let mut cited = Cited::default();
    for (at, name) in text.match_indices("PROTOCOL.md") {
        let after = at + name.len();
        if let Some(rest) = text[after..].strip_prefix('#') {
            let anchor: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            cited.anchors.push((at, anchor));
            continue;
        }
        section_list(text, skip_gap(text, after), &mut cited);
    }
    if is_protocol {
        for (at, _) in text.match_indices(SIGN) {
            if !cited.accounted.contains(&at) {
                section_list(text, at, &mut cited);
            }
        }
    }
    cited
}

/// Whether the section sign at `at` follows `RFC <number> `: a citation of
/// an RFC.
fn cites_an_rfc(text: &str, at: usize) -> bool {
    let before = text[..at].trim_end();
    let number = before.trim_end_matches(|c: char| c.is_ascii_digit());
    number.len() < before.len() && number.ends_with("RFC ")
}

/// Each `contract` (any case) followed by a section sign, even across a
/// line break.
fn contract_citations(text: &str) -> Vec<usize> {
    let lower = text.to_ascii_lowercase();
    lower
        .match_indices("contract")
        .filter_map(|(at, word)| {
            let sign = skip_gap(text, at + word.len());
            text[sign..].starts_with(SIGN).then_some(sign)
        })
        .collect()
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

fn line_text(text: &str, line: usize) -> &str {
    text.lines().nth(line - 1).unwrap_or_default().trim()
}

/// The findings of `check`, minus those on the frozen lines; fails if a
/// frozen line was not found, so that the list cannot go stale.
fn unfrozen(texts: &BTreeMap<String, String>, findings: Vec<Finding>) -> Vec<Finding> {
    let mut used = BTreeSet::new();
    let left = findings
        .into_iter()
        .filter(|finding| {
            let text = &texts[&finding.path];
            let frozen = FROZEN.iter().position(|(path, line)| {
                *path == finding.path && line_text(text, finding.line) == *line
            });
            if let Some(index) = frozen {
                used.insert(index);
            }
            frozen.is_none()
        })
        .collect();
    let stale: Vec<_> = FROZEN
        .iter()
        .enumerate()
        .filter(|(index, _)| !used.contains(index))
        .map(|(_, (path, line))| format!("{path}: {line}"))
        .collect();
    assert!(
        stale.is_empty(),
        "frozen lines that no longer cite anything (update FROZEN):\n{}",
        stale.join("\n")
    );
    left
}

fn report(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("{}:{}: {}", f.path, f.line, f.what))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_protocol_citation_names_a_section_that_exists() {
    let root = workspace_root();
    let texts = repository_texts(&root);
    let protocol = Protocol::parse(&texts[PROTOCOL]);
    assert!(
        protocol.sections.len() > 40,
        "too few numbered sections in {PROTOCOL}: {:?}",
        protocol.sections
    );
    let mut citations = 0;
    let mut broken = Vec::new();
    for (path, text) in &texts {
        let cited = protocol_citations(text, path == PROTOCOL);
        citations += cited.sections.len() + cited.anchors.len();
        for (at, section) in &cited.sections {
            if !protocol.sections.contains(section) {
                broken.push(Finding {
                    path: path.clone(),
                    line: line_of(text, *at),
                    what: format!("section {section} is not in {PROTOCOL}"),
                });
            }
        }
        for (at, anchor) in &cited.anchors {
            if !protocol.anchors.contains(anchor) {
                broken.push(Finding {
                    path: path.clone(),
                    line: line_of(text, *at),
                    what: format!("#{anchor} is not a heading of {PROTOCOL}"),
                });
            }
        }
    }
    assert!(
        citations > 50,
        "the scan found only {citations} citations: is it looking in the right place?"
    );
    assert!(
        broken.is_empty(),
        "citations of sections {PROTOCOL} does not have:\n{}",
        report(&broken)
    );
}

#[test]
fn every_section_sign_names_its_document_and_none_the_old_contract() {
    let root = workspace_root();
    let texts = repository_texts(&root);
    let mut findings = Vec::new();
    for (path, text) in &texts {
        let cited = protocol_citations(text, path == PROTOCOL);
        let contract = contract_citations(text);
        for &at in &contract {
            findings.push(Finding {
                path: path.clone(),
                line: line_of(text, at),
                what: format!(
                    "cites the external contract, not {PROTOCOL}: {}",
                    line_text(text, line_of(text, at))
                ),
            });
        }
        for (at, _) in text.match_indices(SIGN) {
            if cited.accounted.contains(&at) || contract.contains(&at) || cites_an_rfc(text, at) {
                continue;
            }
            findings.push(Finding {
                path: path.clone(),
                line: line_of(text, at),
                what: format!(
                    "a section sign that names no document: {}",
                    line_text(text, line_of(text, at))
                ),
            });
        }
    }
    findings.sort();
    let left = unfrozen(&texts, findings);
    assert!(
        left.is_empty(),
        "{} citation(s) that do not resolve inside the repository \
         (write `PROTOCOL.md §N.M`):\n{}",
        left.len(),
        report(&left)
    );
}

/// The `| code | \`reason\` |` rows of a markdown section.
fn close_code_rows(doc: &str, heading: &str) -> BTreeSet<String> {
    let section = doc
        .split("\n## ")
        .flat_map(|part| part.split("\n### "))
        .find(|part| part.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    section
        .lines()
        .filter(|line| {
            line.starts_with("| ") && line.as_bytes().get(2).is_some_and(u8::is_ascii_digit)
        })
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            Some(format!("{} {}", cells.next()?, cells.next()?))
        })
        .collect()
}

/// ARCHITECTURE.md's table is checked against the gateway's `CloseReason`
/// (`services/gateway/src/close.rs`); PROTOCOL.md's must list the same.
#[test]
fn the_close_codes_are_those_of_the_gateway() {
    let root = workspace_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let protocol = close_code_rows(&read(PROTOCOL), "5.10 Close codes");
    let architecture = close_code_rows(&read("docs/ARCHITECTURE.md"), "Close codes");
    assert!(protocol.len() > 10, "{protocol:?}");
    assert_eq!(protocol, architecture);
}

/// The scanner itself, on made-up text (section signs as escapes, so that
/// this file cites nothing).
#[test]
fn the_scanner_reads_citations_as_they_are_written() {
    let sections = |text: &str| -> Vec<String> {
        protocol_citations(text, false)
            .sections
            .into_iter()
            .map(|(_, section)| section)
            .collect()
    };
    assert_eq!(sections("see PROTOCOL.md \u{a7}5.3."), ["5.3"]);
    assert_eq!(
        sections("(PROTOCOL.md \u{a7}2.6, \u{a7}2.7 and \u{a7}3)"),
        ["2.6", "2.7", "3"]
    );
    assert_eq!(sections("PROTOCOL.md \u{a7}2/\u{a7}4"), ["2", "4"]);
    assert_eq!(sections("(PROTOCOL.md\n//! \u{a7}1.10)."), ["1.10"]);
    assert_eq!(sections("PROTOCOL.md is here, \u{a7}4 elsewhere"), [""; 0]);
    let anchors = protocol_citations("[x](PROTOCOL.md#53-client-events)", false).anchors;
    assert_eq!(anchors[0].1, "53-client-events");

    assert_eq!(contract_citations("the contract \u{a7}6 limit").len(), 1);
    assert_eq!(contract_citations("(Contract\n-- \u{a7}3.4)").len(), 1);
    assert!(contract_citations("the contract's limits").is_empty());
    let rfc = "RFC 8259 \u{a7}8";
    assert!(cites_an_rfc(rfc, rfc.find('\u{a7}').unwrap_or_default()));

    let protocol = Protocol::parse("## 5. The gateway\n\n### 5.3 Client events\n");
    assert_eq!(
        protocol.sections,
        BTreeSet::from(["5".into(), "5.3".into()])
    );
    assert!(protocol.anchors.contains("53-client-events"));
    assert!(protocol.anchors.contains("5-the-gateway"));
}
