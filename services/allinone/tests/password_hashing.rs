//! Password hashing is bounded: past its running slots and its queue a
//! registration is refused 503 with `retry-after`, and writes nothing.

mod support;

use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::json;
use support::{Backends, PASSWORD, TestStack};

const REGISTRATIONS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_hashing_bound_are_503_and_write_nothing() {
    let t = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_api = |api| {
            api.hashing_limits.max_concurrent = NonZeroUsize::MIN;
            api.hashing_limits.max_queued = 0;
            api.hashing_limits.queue_wait = Duration::from_secs(2);
            // A hash slow enough (tens of milliseconds) that requests sent
            // together overlap it; the harness's cost is microseconds.
            api.password_hashing = filament_api::PasswordHashing {
                memory_kib: 8 * 1024,
                iterations: 3,
            };
        };
    })
    .await
    .expect("embedded");

    let suffix = &ulid::Ulid::generate().to_string()[20..];
    let usernames: Vec<String> = (0..REGISTRATIONS)
        .map(|i| format!("storm{i}_{suffix}").to_lowercase())
        .collect();
    let responses = futures_util::future::join_all(usernames.iter().map(|username| {
        t.http
            .post(t.api("/auth/register"))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
    }))
    .await;

    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (username, response) in usernames.iter().zip(responses) {
        let response = response.expect("sent");
        match response.status().as_u16() {
            200 => accepted.push(username),
            503 => {
                assert_eq!(response.headers()["retry-after"], "2");
                assert_eq!(
                    response.json::<serde_json::Value>().await.expect("json"),
                    json!({"error": "unavailable"})
                );
                refused.push(username);
            }
            other => panic!("unexpected {other} for {username}"),
        }
    }
    assert!(!accepted.is_empty(), "one hash at a time still runs");
    assert!(
        !refused.is_empty(),
        "{REGISTRATIONS} registrations at once, one slot and no queue, none refused"
    );

    // One at a time, every login gets a slot: the accepted users exist,
    // the refused ones were never written.
    for username in &accepted {
        let (status, body) = t
            .post(
                "/auth/login",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{username}: {body}");
    }
    for username in &refused {
        let (status, body) = t
            .post(
                "/auth/login",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(
            (status, body),
            (401, json!({"error": "invalid_credentials"})),
            "{username} was refused but written"
        );
    }

    let admin = t.stack.api_admin_addr.expect("api admin listener");
    let metrics = t
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    let counted = format!(
        "filament_api_password_hashing_refusals_total{{reason=\"queue_full\"}} {}",
        refused.len()
    );
    assert!(
        metrics.contains(&counted),
        "missing {counted:?} in\n{metrics}"
    );
    t.stack.stop().await.expect("clean shutdown");
}
