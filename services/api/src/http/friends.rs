//! `/friends`: the friend list, friend requests (send, list, accept, cancel
//! or decline) and unfriending.
//!
//! Every change is told to both parties' sockets. Where the payload names
//! "the other party" (`friend_request_update`, `friend_remove`) each party
//! gets its own copy, addressed to that party alone. Each change's events
//! are stored with it (docs/adr/0006-outbox.md).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use filament_proto::v1::{self as pb, event};
use filament_wire::payloads::FriendRequestCreate;
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::parse_id;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, FriendRequestPath, Id, UserPath};
use crate::http::roles::{ACK, Ack};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{
    AcceptedFriendRequest, FriendRequestParties, FriendRequestRecord, NewFriendRequest,
};

/// The state `friend_request_update` reports; the only one there is.
const ACCEPTED: &str = "accepted";

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
    let friends = state.store().friends(user.user_id).await?;
    Ok(Json(FriendList {
        friends: friends
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
    let recipient = parse_id(&dto.recipient_user_id)?;
    if recipient == user.user_id {
        return Err(ApiError::InvalidRequest);
    }
    // The event carries both usernames, which the write's transaction
    // reads.
    let deferred = publish::Deferred::new(&state);
    let outbox = |record: &FriendRequestRecord| {
        let parties = vec![
            record.sender_user_id.to_string(),
            record.recipient_user_id.to_string(),
        ];
        let payload = event::Payload::FriendRequestCreate(proto_request(record));
        deferred.rows(vec![publish::for_users(parties, Vec::new(), payload)])
    };
    // Unknown recipient, already friends, or pending either way:
    // PROTOCOL.md §2.4 answers all of them with the same 400.
    let record = state
        .store()
        .create_friend_request(
            NewFriendRequest {
                request_id: state.new_id(),
                sender_user_id: user.user_id,
                recipient_user_id: recipient,
                created_at_unix: now_unix(),
            },
            &outbox,
        )
        .await?
        .ok_or(ApiError::InvalidRequest)?;
    publish::publish_all(&state, deferred.into_pending()).await;
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
    let requests = state.store().friend_requests(user.user_id).await?;
    let (incoming, outgoing): (Vec<_>, Vec<_>) = requests
        .iter()
        .partition(|request| request.recipient_user_id == user.user_id);
    let wire = |requests: Vec<&FriendRequestRecord>| {
        requests
            .into_iter()
            .map(|request| FriendRequestCreate {
                request_id: request.request_id.to_string(),
                sender_user_id: request.sender_user_id.to_string(),
                sender_username: request.sender_username.clone(),
                recipient_user_id: request.recipient_user_id.to_string(),
                recipient_username: request.recipient_username.clone(),
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
    Ids([request_id]): Ids<1>,
) -> ApiResult<Json<Ack>> {
    let now = now_unix();
    // Who sent the request, and the names, only the transaction knows.
    let deferred = publish::Deferred::new(&state);
    let outbox = |accepted: &AcceptedFriendRequest| {
        deferred.rows(request_update_copies(accepted, user.user_id, now).into())
    };
    state
        .store()
        .accept_friend_request(request_id, user.user_id, now, &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(&state, deferred.into_pending()).await;
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
    Ids([request_id]): Ids<1>,
) -> ApiResult<StatusCode> {
    let now = now_unix();
    // The other party only the transaction knows.
    let deferred = publish::Deferred::new(&state);
    let outbox = |parties: &FriendRequestParties| {
        let payload = event::Payload::FriendRequestDelete(pb::FriendRequestDelete {
            request_id: request_id.to_string(),
            deleted_at_unix: now,
            actor_user_id: Some(user.user_id.to_string()),
        });
        let audience = vec![
            parties.sender_user_id.to_string(),
            parties.recipient_user_id.to_string(),
        ];
        deferred.rows(vec![publish::for_users(audience, Vec::new(), payload)])
    };
    state
        .store()
        .delete_friend_request(request_id, user.user_id, &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(&state, deferred.into_pending()).await;
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
    Ids([friend_id]): Ids<1>,
) -> ApiResult<StatusCode> {
    if friend_id == user.user_id {
        return Err(ApiError::InvalidRequest);
    }
    let now = now_unix();
    let copies: Vec<Pending> = [(user.user_id, friend_id), (friend_id, user.user_id)]
        .into_iter()
        .map(|(receiver, other)| {
            let payload = event::Payload::FriendRemove(pb::FriendRemove {
                user_id: receiver.to_string(),
                friend_user_id: other.to_string(),
                removed_at_unix: now,
                actor_user_id: Some(user.user_id.to_string()),
            });
            Pending::new(&state, to_one_user(receiver, payload))
        })
        .collect();
    let outbox = copies.iter().map(Pending::row).collect();
    // Stored, and so published, only if there was a friendship to end.
    if state
        .store()
        .remove_friend(user.user_id, friend_id, outbox)
        .await?
    {
        publish::publish_all(&state, copies).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn proto_request(record: &FriendRequestRecord) -> pb::FriendRequestCreate {
    pb::FriendRequestCreate {
        request_id: record.request_id.to_string(),
        sender_user_id: record.sender_user_id.to_string(),
        sender_username: record.sender_username.clone(),
        recipient_user_id: record.recipient_user_id.to_string(),
        recipient_username: record.recipient_username.clone(),
        created_at_unix: record.created_at_unix,
    }
}

/// One `friend_request_update` per party: `user_id` is the party receiving
/// it and `friend_*` the other one.
fn request_update_copies(
    accepted: &AcceptedFriendRequest,
    actor: Ulid,
    now: i64,
) -> [pb::Event; 2] {
    let request = &accepted.request;
    let sender = (request.sender_user_id, request.sender_username.as_str());
    let recipient = (
        request.recipient_user_id,
        request.recipient_username.as_str(),
    );
    [(sender, recipient), (recipient, sender)].map(|((receiver, _), (friend, friend_name))| {
        let payload = event::Payload::FriendRequestUpdate(pb::FriendRequestUpdate {
            request_id: request.request_id.to_string(),
            state: ACCEPTED.to_owned(),
            user_id: receiver.to_string(),
            friend_user_id: friend.to_string(),
            friend_username: friend_name.to_owned(),
            friendship_created_at_unix: accepted.friendship_created_at_unix,
            updated_at_unix: now,
            actor_user_id: Some(actor.to_string()),
        });
        to_one_user(receiver, payload)
    })
}

fn to_one_user(user_id: Ulid, payload: event::Payload) -> pb::Event {
    publish::for_users(vec![user_id.to_string()], Vec::new(), payload)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_friends))
        .routes(routes!(create_request, list_requests))
        .routes(routes!(accept_request))
        .routes(routes!(delete_request))
        .routes(routes!(remove_friend))
}
