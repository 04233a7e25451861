//! The friend use cases behind `/friends`: the friend list, friend requests
//! (send, list, accept, cancel or decline) and unfriending, and the events
//! they publish.
//!
//! Every change is told to both parties' sockets. Where the payload names
//! "the other party" (`friend_request_update`, `friend_remove`) each party
//! gets its own copy, addressed to that party alone. Each change's events
//! are stored with it (docs/adr/0006-outbox.md).

use filament_ids::UserId;
use filament_proto::v1::{self as pb, event};
use ulid::Ulid;

use crate::clock::now_unix;
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{
    AcceptedFriendRequest, FriendRecord, FriendRequestParties, FriendRequestRecord,
    NewFriendRequest,
};

/// The state `friend_request_update` reports; the only one there is.
const ACCEPTED: &str = "accepted";

/// A user's pending requests, split by direction.
#[derive(Debug)]
pub struct PendingRequests {
    /// Requests to the user.
    pub incoming: Vec<FriendRequestRecord>,
    /// Requests from the user.
    pub outgoing: Vec<FriendRequestRecord>,
}

/// The user's friends.
pub async fn friends(state: &AppState, user: UserId) -> ApiResult<Vec<FriendRecord>> {
    Ok(state.store().friends(user).await?)
}

/// Sends a friend request from `sender` to `recipient`, and answers it.
/// Oneself, an unknown recipient, a friend already, or a request pending
/// either way are all `ApiError::InvalidRequest`.
pub async fn send_request(
    state: &AppState,
    sender: UserId,
    recipient: UserId,
) -> ApiResult<FriendRequestRecord> {
    if recipient == sender {
        return Err(ApiError::InvalidRequest);
    }
    // The event carries both usernames, which the write's transaction
    // reads.
    let deferred = publish::Deferred::new(state.publisher());
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
                sender_user_id: sender,
                recipient_user_id: recipient,
                created_at_unix: now_unix(),
            },
            &outbox,
        )
        .await?
        .ok_or(ApiError::InvalidRequest)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(record)
}

/// The requests pending to and from `user`.
pub async fn pending_requests(state: &AppState, user: UserId) -> ApiResult<PendingRequests> {
    let requests = state.store().friend_requests(user).await?;
    let (incoming, outgoing) = requests
        .into_iter()
        .partition(|request| request.recipient_user_id == user);
    Ok(PendingRequests { incoming, outgoing })
}

/// Accepts a request as its recipient. Only the recipient may accept; for
/// anyone else the request does not exist (`ApiError::NotFound`), so ids
/// cannot be probed.
pub async fn accept_request(state: &AppState, user: UserId, request_id: Ulid) -> ApiResult<()> {
    let now = now_unix();
    // Who sent the request, and the names, only the transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |accepted: &AcceptedFriendRequest| {
        deferred.rows(request_update_copies(accepted, user, now).into())
    };
    state
        .store()
        .accept_friend_request(request_id, user, now, &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(())
}

/// Cancels (sender) or declines (recipient) a request; `ApiError::NotFound`
/// if it is not one of the user's.
pub async fn delete_request(state: &AppState, user: UserId, request_id: Ulid) -> ApiResult<()> {
    let now = now_unix();
    // The other party only the transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |parties: &FriendRequestParties| {
        let payload = event::Payload::FriendRequestDelete(pb::FriendRequestDelete {
            request_id: request_id.to_string(),
            deleted_at_unix: now,
            actor_user_id: Some(user.to_string()),
        });
        let audience = vec![
            parties.sender_user_id.to_string(),
            parties.recipient_user_id.to_string(),
        ];
        deferred.rows(vec![publish::for_users(audience, Vec::new(), payload)])
    };
    state
        .store()
        .delete_friend_request(request_id, user, &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(())
}

/// Ends the friendship of `user` and `friend`. Idempotent: unfriending
/// someone who is not a friend (or does not exist) changes nothing and
/// tells nobody. Oneself is `ApiError::InvalidRequest`.
pub async fn remove_friend(state: &AppState, user_id: UserId, friend_id: UserId) -> ApiResult<()> {
    if friend_id == user_id {
        return Err(ApiError::InvalidRequest);
    }
    let now = now_unix();
    let copies: Vec<Pending> = [(user_id, friend_id), (friend_id, user_id)]
        .into_iter()
        .map(|(receiver, other)| {
            let payload = event::Payload::FriendRemove(pb::FriendRemove {
                user_id: receiver.to_string(),
                friend_user_id: other.to_string(),
                removed_at_unix: now,
                actor_user_id: Some(user_id.to_string()),
            });
            Pending::new(state.publisher(), to_one_user(receiver, payload))
        })
        .collect();
    let outbox = copies.iter().map(Pending::row).collect();
    // Stored, and so published, only if there was a friendship to end.
    if state
        .store()
        .remove_friend(user_id, friend_id, outbox)
        .await?
    {
        publish::publish_all(state.publisher(), copies).await;
    }
    Ok(())
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
    actor: UserId,
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

fn to_one_user(user_id: UserId, payload: event::Payload) -> pb::Event {
    publish::for_users(vec![user_id.to_string()], Vec::new(), payload)
}
