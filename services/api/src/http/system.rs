//! `/health`, `/echo` and `/slow` (PROTOCOL.md §2.1): no auth, no state.
//!
//! `/metrics` is deliberately not here: metrics are served only on the
//! admin listener (`crate::admin`), never on the public origin.

use std::time::Duration;

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::storable_text;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::JsonBody;
use crate::http::openapi::ApiRouter;

/// How long `/slow` takes to answer.
const SLOW_DELAY: Duration = Duration::from_millis(200);

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    /// Not empty; no NUL.
    #[schema(min_length = 1)]
    message: String,
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses((status = 200, description = "The api is up.", body = Status)),
)]
async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Sends the message back; an empty one is a 400, and so is a NUL, like in
/// every other text field. The body limit bounds it.
#[utoipa::path(
    post,
    path = "/echo",
    tag = "system",
    request_body = Echo,
    responses((status = 200, description = "The message, sent back.", body = Echo)),
)]
async fn echo(JsonBody(echo): JsonBody<Echo>) -> ApiResult<Json<Echo>> {
    if echo.message.is_empty() || !storable_text(&echo.message) {
        return Err(ApiError::InvalidRequest);
    }
    Ok(Json(echo))
}

/// Answers after a fixed delay, for clients that test their timeouts; the
/// request timeout and the global limiter bound what it can tie up.
#[utoipa::path(
    get,
    path = "/slow",
    tag = "system",
    responses((status = 200, description = "The api is up, 200 ms later.", body = Status)),
)]
async fn slow() -> Json<Status> {
    tokio::time::sleep(SLOW_DELAY).await;
    Json(Status { status: "ok" })
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(echo))
        .routes(routes!(slow))
}
