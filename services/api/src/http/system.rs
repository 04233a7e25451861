//! `/health`, `/echo` and `/slow` (contract §3.1): no auth, no state.
//!
//! `/metrics` is deliberately not here: metrics are served only on the
//! admin listener (`crate::admin`), never on the public origin.

use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::domain::storable_text;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::JsonBody;
use crate::state::AppState;

/// How long `/slow` takes to answer.
const SLOW_DELAY: Duration = Duration::from_millis(200);

#[derive(Serialize)]
pub struct Status {
    status: &'static str,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    message: String,
}

async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Sends the message back; an empty one is a 400, and so is a NUL, like in
/// every other text field. The body limit bounds it.
async fn echo(JsonBody(echo): JsonBody<Echo>) -> ApiResult<Json<Echo>> {
    if echo.message.is_empty() || !storable_text(&echo.message) {
        return Err(ApiError::InvalidRequest);
    }
    Ok(Json(echo))
}

/// Answers after a fixed delay, for clients that test their timeouts; the
/// request timeout and the global limiter bound what it can tie up.
async fn slow() -> Json<Status> {
    tokio::time::sleep(SLOW_DELAY).await;
    Json(Status { status: "ok" })
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/echo", post(echo))
        .route("/slow", get(slow))
}
