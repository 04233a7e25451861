//! `/friends`: the friend list, friend requests (send, list, accept, cancel
//! or decline) and unfriending.
//!
//! This adapter owns the request and response shapes; the use cases, and
//! the events each change tells both parties, are `domain::friends`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use filament_ids::UserId;
use filament_wire::payloads::FriendRequestCreate;
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::friends::{self, PendingRequests};
use crate::domain::parse_id;
use crate::error::{ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, FriendRequestPath, Id, UserPath};
use crate::http::roles::{ACK, Ack};
use crate::state::AppState;
use crate::store::FriendRequestRecord;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequestDto {
    #[schema(value_type = Id)]
    recipient_user_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct FriendList {
    friends: Vec<Friend>,
}

#[derive(Serialize, ToSchema)]
pub struct Friend {
    user_id: String,
    username: String,
    created_at_unix: i64,
}

/// The body of `POST /friends/requests` (no usernames, unlike the lists).
#[derive(Serialize, ToSchema)]
pub struct CreatedRequest {
    request_id: String,
    sender_user_id: String,
    recipient_user_id: String,
    created_at_unix: i64,
}

/// `GET /friends/requests`. Each entry has exactly the fields of
/// `friend_request_create`, so it reuses that shape.
#[derive(Serialize, ToSchema)]
pub struct RequestLists {
    incoming: Vec<FriendRequestCreate>,
    outgoing: Vec<FriendRequestCreate>,
}

#[utoipa::path(
    get,
    path = "/friends",
    tag = "friends",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's friends.", body = FriendList)),
)]
pub async fn list_friends(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<FriendList>> {
    let list = friends::friends(&state, user.user_id).await?;
    Ok(Json(FriendList {
        friends: list
            .into_iter()
            .map(|friend| Friend {
                user_id: friend.user_id.to_string(),
                username: friend.username,
                created_at_unix: friend.created_at_unix,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/friends/requests",
    tag = "friends",
    security(("bearer" = [])),
    request_body = CreateRequestDto,
    responses(
        (status = 200, description = "The request, sent.", body = CreatedRequest),
        (status = 400, description = "A malformed id, oneself, an unknown user, a friend already, or a request pending either way (`invalid_request`).", body = ErrorBody),
    ),
)]
pub async fn create_request(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(dto): JsonBody<CreateRequestDto>,
) -> ApiResult<Json<CreatedRequest>> {
    let recipient: UserId = parse_id(&dto.recipient_user_id)?;
    let record = friends::send_request(&state, user.user_id, recipient).await?;
    Ok(Json(CreatedRequest {
        request_id: record.request_id.to_string(),
        sender_user_id: record.sender_user_id.to_string(),
        recipient_user_id: record.recipient_user_id.to_string(),
        created_at_unix: record.created_at_unix,
    }))
}

#[utoipa::path(
    get,
    path = "/friends/requests",
    tag = "friends",
    security(("bearer" = [])),
    responses((status = 200, description = "Pending requests to and from the caller.", body = RequestLists)),
)]
pub async fn list_requests(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<RequestLists>> {
    let PendingRequests { incoming, outgoing } =
        friends::pending_requests(&state, user.user_id).await?;
    let wire = |requests: Vec<FriendRequestRecord>| {
        requests
            .into_iter()
            .map(|request| FriendRequestCreate {
                request_id: request.request_id.to_string(),
                sender_user_id: request.sender_user_id.to_string(),
                sender_username: request.sender_username,
                recipient_user_id: request.recipient_user_id.to_string(),
                recipient_username: request.recipient_username,
                created_at_unix: request.created_at_unix,
            })
            .collect()
    };
    Ok(Json(RequestLists {
        incoming: wire(incoming),
        outgoing: wire(outgoing),
    }))
}

/// Only the recipient may accept; for anyone else the request does not
/// exist (404), so ids cannot be probed.
#[utoipa::path(
    post,
    path = "/friends/requests/{request_id}/accept",
    tag = "friends",
    security(("bearer" = [])),
    params(FriendRequestPath),
    responses(
        (status = 200, description = "Friends now.", body = Ack),
        (status = 404, description = "No such request to the caller (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn accept_request(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(request_id): Ids<Ulid>,
) -> ApiResult<Json<Ack>> {
    friends::accept_request(&state, user.user_id, request_id).await?;
    Ok(Json(ACK))
}

/// Cancels (sender) or declines (recipient) a request.
#[utoipa::path(
    delete,
    path = "/friends/requests/{request_id}",
    tag = "friends",
    security(("bearer" = [])),
    params(FriendRequestPath),
    responses(
        (status = 204, description = "Cancelled or declined."),
        (status = 404, description = "No such request of the caller's (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn delete_request(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(request_id): Ids<Ulid>,
) -> ApiResult<StatusCode> {
    friends::delete_request(&state, user.user_id, request_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Idempotent: unfriending someone who is not a friend (or does not exist)
/// is a 204 that changes nothing and tells nobody.
#[utoipa::path(
    delete,
    path = "/friends/{user_id}",
    tag = "friends",
    security(("bearer" = [])),
    params(UserPath),
    responses((status = 204, description = "Not friends (any more).")),
)]
pub async fn remove_friend(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids(friend_id): Ids<UserId>,
) -> ApiResult<StatusCode> {
    friends::remove_friend(&state, user.user_id, friend_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_friends))
        .routes(routes!(create_request, list_requests))
        .routes(routes!(accept_request))
        .routes(routes!(delete_request))
        .routes(routes!(remove_friend))
}
