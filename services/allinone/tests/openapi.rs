//! The api's OpenAPI document as the public origin serves it: public, at
//! `GET /api/openapi.json`, the same as the document built without a
//! stack, and the same as the checked-in `docs/openapi.json`, so the file
//! clients generate code from cannot drift from the routes.
//! `UPDATE_OPENAPI=1 cargo test -p filament-allinone --test openapi`
//! rewrites the file.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{Backends, TestStack};

const CHECKED_IN: &str = "docs/openapi.json";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The document as a file: pretty-printed, with a final newline.
fn render(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("serializes");
    text.push('\n');
    text
}

#[tokio::test]
async fn the_served_document_is_the_checked_in_one() {
    let stack = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded stack");
    let url = format!("http://{}/api/openapi.json", stack.stack.public_addr);
    // No token: the document is public.
    let response = stack.http.get(&url).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let served: Value = response.json().await.expect("JSON");

    let built = serde_json::to_value(filament_api::openapi_document()).expect("serializes");
    assert!(
        served == built,
        "the served document is not the one built from the routes"
    );

    let path = repo_root().join(CHECKED_IN);
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, render(&served)).expect("writes docs/openapi.json");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let current: Value = serde_json::from_str(&current).unwrap_or(Value::Null);
    assert!(
        current == served,
        "{CHECKED_IN} is out of date with the api's routes; regenerate it with \
         UPDATE_OPENAPI=1 cargo test -p filament-allinone --test openapi"
    );
}
