//! What the api's integration tests share.

use std::io::Write as _;

const POSTGRES_URL_VAR: &str = "TEST_DATABASE_URL";

/// `TEST_DATABASE_URL`, or `None` after saying loudly that `what` was not
/// checked.
pub fn postgres_url(what: &str) -> Option<String> {
    let url = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        // The real stderr: the harness hides `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {POSTGRES_URL_VAR} is unset; {what}"
        );
    }
    url
}
