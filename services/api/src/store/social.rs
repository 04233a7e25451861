//! The social side of a user: profile edits, avatar and banner images,
//! friend requests and friendships.
//!
//! Image bytes are stored here, in the database, so an api replica keeps no
//! files of its own. A friendship is two rows (one per side) so that either
//! side's list is a key range; a pending request is unique per pair of users
//! whichever way it points, which the schema enforces rather than a
//! check-then-insert that two simultaneous requests could both pass.

use std::sync::LazyLock;

use async_trait::async_trait;
use filament_ids::{GuildId, UserId};
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type,
};
use ulid::Ulid;

use super::sql::{SqlStore, conflict_on, decode_id, decode_user};
use super::{OutboxEvent, OutboxFor, StoreResult, UserRecord};

/// How many ids one lookup query takes. Shorter lists are padded with an id
/// that matches nobody, so the statement text is always the same and is
/// prepared once per connection.
const USER_LOOKUP_BATCH: usize = 64;

/// Which of a user's two images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Avatar,
    Banner,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avatar => "avatar",
            Self::Banner => "banner",
        }
    }
}

/// A profile edit; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub username: Option<String>,
    pub about_markdown: Option<String>,
}

/// A stored avatar or banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileImage {
    /// The sniffed type, sent back as `Content-Type`.
    pub content_type: String,
    /// SHA-256 of `bytes`, lowercase hex; the `ETag`.
    pub sha256_hex: String,
    pub bytes: Vec<u8>,
}

/// What `POST /users/lookup` returns per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: String,
    pub avatar_version: i64,
}

/// One friend of a user, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRecord {
    pub user_id: UserId,
    pub username: String,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFriendRequest {
    pub request_id: Ulid,
    pub sender_user_id: UserId,
    pub recipient_user_id: UserId,
    pub created_at_unix: i64,
}

/// A pending request, with both parties' current usernames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRequestRecord {
    pub request_id: Ulid,
    pub sender_user_id: UserId,
    pub sender_username: String,
    pub recipient_user_id: UserId,
    pub recipient_username: String,
    pub created_at_unix: i64,
}

/// A request that was accepted, and the friendship it made (or found: an
/// existing friendship keeps its original date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedFriendRequest {
    pub request: FriendRequestRecord,
    pub friendship_created_at_unix: i64,
}

/// The two parties of a request that was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FriendRequestParties {
    pub sender_user_id: UserId,
    pub recipient_user_id: UserId,
}

/// Who hears about a user's profile changes besides the user: their friends
/// and everyone present in a guild they are a member of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileAudience {
    pub friend_ids: Vec<UserId>,
    pub guild_ids: Vec<GuildId>,
}

#[async_trait]
pub trait SocialStore: Send + Sync + 'static {
    // --- profiles --------------------------------------------------------
    /// Applies the change and returns the user as it now is; `None` for an
    /// unknown user. `Conflict("username")` when the username is taken, and
    /// then nothing changes.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if the user exists.
    async fn update_profile(
        &self,
        user_id: UserId,
        change: ProfileChange,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<UserRecord>>;

    /// The users among `user_ids` that exist, in the order asked, each once.
    async fn users_by_ids(&self, user_ids: &[UserId]) -> StoreResult<Vec<UserSummary>>;

    /// Stores the image and bumps its version to `max(previous + 1,
    /// now_unix)`, in one transaction; returns the user as it now is, or
    /// `None` (storing nothing) for an unknown user.
    ///
    /// Stores the events `outbox` builds from the user as it now is (its new
    /// version), the change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md).
    async fn set_profile_image(
        &self,
        user_id: UserId,
        kind: ImageKind,
        image: ProfileImage,
        now_unix: i64,
        outbox: OutboxFor<'_, UserRecord>,
    ) -> StoreResult<Option<UserRecord>>;

    async fn profile_image(
        &self,
        user_id: UserId,
        kind: ImageKind,
    ) -> StoreResult<Option<ProfileImage>>;

    async fn profile_audience(&self, user_id: UserId) -> StoreResult<ProfileAudience>;

    // --- friends ---------------------------------------------------------
    /// The user's friends, newest friendship first.
    async fn friends(&self, user_id: UserId) -> StoreResult<Vec<FriendRecord>>;

    /// Creates the request unless the recipient is unknown, the two are
    /// already friends, or a request between them is pending either way;
    /// then `None` and nothing is written.
    ///
    /// Stores the events `outbox` builds from the new request (with both
    /// usernames), the change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md).
    async fn create_friend_request(
        &self,
        request: NewFriendRequest,
        outbox: OutboxFor<'_, FriendRequestRecord>,
    ) -> StoreResult<Option<FriendRequestRecord>>;

    /// Pending requests the user sent or received, newest first.
    async fn friend_requests(&self, user_id: UserId) -> StoreResult<Vec<FriendRequestRecord>>;

    /// Turns the request into a friendship, if `recipient_user_id` is its
    /// recipient; otherwise `None` and nothing changes.
    ///
    /// Stores the events `outbox` builds from the accepted request, the
    /// change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md).
    async fn accept_friend_request(
        &self,
        request_id: Ulid,
        recipient_user_id: UserId,
        now_unix: i64,
        outbox: OutboxFor<'_, AcceptedFriendRequest>,
    ) -> StoreResult<Option<AcceptedFriendRequest>>;

    /// Deletes the request, if `party_user_id` sent or received it.
    ///
    /// Stores the events `outbox` builds from the request's parties, the
    /// change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md), only if it was deleted.
    async fn delete_friend_request(
        &self,
        request_id: Ulid,
        party_user_id: UserId,
        outbox: OutboxFor<'_, FriendRequestParties>,
    ) -> StoreResult<Option<FriendRequestParties>>;

    /// Ends the friendship; returns whether there was one.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if there was.
    async fn remove_friend(
        &self,
        user_id: UserId,
        friend_user_id: UserId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool>;
}

const USER_COLUMNS: &str = "user_id, username, password_hash, about_markdown, avatar_version, \
                            banner_version, created_at_unix";

const REQUEST_VIEW: &str = "SELECT r.request_id, r.sender_user_id, s.username AS sender_username, \
     r.recipient_user_id, p.username AS recipient_username, r.created_at_unix \
     FROM friend_requests r \
     JOIN users s ON s.user_id = r.sender_user_id \
     JOIN users p ON p.user_id = r.recipient_user_id";

static LOOKUP_SQL: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=USER_LOOKUP_BATCH).map(|n| format!("${n}")).collect();
    format!(
        "SELECT user_id, username, avatar_version FROM users WHERE user_id IN ({})",
        placeholders.join(", ")
    )
});

static REQUEST_BY_ID_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{REQUEST_VIEW} WHERE r.request_id = $1"));

static REQUESTS_OF_USER_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{REQUEST_VIEW} WHERE r.sender_user_id = $1 OR r.recipient_user_id = $1 \
         ORDER BY r.created_at_unix DESC, r.request_id DESC"
    )
});

static UPDATE_PROFILE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE users SET username = COALESCE($2, username), \
         about_markdown = COALESCE($3, about_markdown) \
         WHERE user_id = $1 RETURNING {USER_COLUMNS}"
    )
});

// The new version is max(previous + 1, now) (PROTOCOL.md §1.4), computed in
// the UPDATE itself so that two uploads in the same second still get two
// versions. CASE rather than GREATEST/MAX, which the two databases spell
// differently.
static BUMP_AVATAR_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE users SET avatar_version = \
         CASE WHEN avatar_version + 1 > $2 THEN avatar_version + 1 ELSE $2 END \
         WHERE user_id = $1 RETURNING {USER_COLUMNS}"
    )
});

static BUMP_BANNER_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE users SET banner_version = \
         CASE WHEN banner_version + 1 > $2 THEN banner_version + 1 ELSE $2 END \
         WHERE user_id = $1 RETURNING {USER_COLUMNS}"
    )
});

/// The statement text of a `LazyLock`ed query. Only our own constants and
/// digits go into these strings, never a caller's value.
fn sql(text: &'static LazyLock<String>) -> AssertSqlSafe<&'static str> {
    AssertSqlSafe(text.as_str())
}

#[async_trait]
impl<DB> SocialStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn update_profile(
        &self,
        user_id: UserId,
        change: ProfileChange,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<UserRecord>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sql(&UPDATE_PROFILE_SQL))
            .bind(user_id.to_string())
            .bind(change.username)
            .bind(change.about_markdown)
            .fetch_optional(&mut *tx)
            .await
            .map_err(conflict_on("username"))?;
        let Some(user) = row.as_ref().map(decode_user).transpose()? else {
            return Ok(None);
        };
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn users_by_ids(&self, user_ids: &[UserId]) -> StoreResult<Vec<UserSummary>> {
        let mut wanted: Vec<UserId> = Vec::with_capacity(user_ids.len());
        for id in user_ids {
            if !wanted.contains(id) {
                wanted.push(*id);
            }
        }
        let mut found = Vec::with_capacity(wanted.len());
        for batch in wanted.chunks(USER_LOOKUP_BATCH) {
            let mut query = sqlx::query(sql(&LOOKUP_SQL));
            for slot in 0..USER_LOOKUP_BATCH {
                // '' is never a user id.
                query = query.bind(batch.get(slot).map(UserId::to_string).unwrap_or_default());
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(UserSummary {
                    user_id: decode_id(&row, "user_id")?,
                    username: row.try_get("username")?,
                    avatar_version: row.try_get("avatar_version")?,
                });
            }
        }
        // The database returns rows in whatever order its plan gives.
        found.sort_by_key(|user| wanted.iter().position(|id| *id == user.user_id));
        Ok(found)
    }

    async fn set_profile_image(
        &self,
        user_id: UserId,
        kind: ImageKind,
        image: ProfileImage,
        now_unix: i64,
        outbox: OutboxFor<'_, UserRecord>,
    ) -> StoreResult<Option<UserRecord>> {
        let bump = match kind {
            ImageKind::Avatar => &BUMP_AVATAR_SQL,
            ImageKind::Banner => &BUMP_BANNER_SQL,
        };
        let mut tx = self.pool.begin().await?;
        // The UPDATE comes first: it takes the write lock at once (SQLite)
        // and locks the user's row (Postgres), so concurrent uploads of one
        // user apply one after the other, bytes and version together.
        let Some(row) = sqlx::query(sql(bump))
            .bind(user_id.to_string())
            .bind(now_unix)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let user = decode_user(&row)?;
        sqlx::query(
            "INSERT INTO profile_images \
             (user_id, kind, content_type, sha256_hex, bytes, updated_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, kind) DO UPDATE SET \
             content_type = excluded.content_type, sha256_hex = excluded.sha256_hex, \
             bytes = excluded.bytes, updated_at_unix = excluded.updated_at_unix",
        )
        .bind(user_id.to_string())
        .bind(kind.as_str().to_owned())
        .bind(image.content_type)
        .bind(image.sha256_hex)
        .bind(image.bytes)
        .bind(now_unix)
        .execute(&mut *tx)
        .await?;
        Self::enqueue_outbox_all(&mut tx, outbox(&user)).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn profile_image(
        &self,
        user_id: UserId,
        kind: ImageKind,
    ) -> StoreResult<Option<ProfileImage>> {
        let row = sqlx::query(
            "SELECT content_type, sha256_hex, bytes FROM profile_images \
             WHERE user_id = $1 AND kind = $2",
        )
        .bind(user_id.to_string())
        .bind(kind.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ProfileImage {
                content_type: row.try_get("content_type")?,
                sha256_hex: row.try_get("sha256_hex")?,
                bytes: row.try_get("bytes")?,
            })
        })
        .transpose()
    }

    async fn profile_audience(&self, user_id: UserId) -> StoreResult<ProfileAudience> {
        let friends = sqlx::query("SELECT friend_user_id FROM friendships WHERE user_id = $1")
            .bind(user_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        let guilds = sqlx::query("SELECT guild_id FROM guild_members WHERE user_id = $1")
            .bind(user_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        Ok(ProfileAudience {
            friend_ids: friends
                .iter()
                .map(|row| decode_id(row, "friend_user_id"))
                .collect::<Result<_, _>>()?,
            guild_ids: guilds
                .iter()
                .map(|row| decode_id(row, "guild_id"))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn friends(&self, user_id: UserId) -> StoreResult<Vec<FriendRecord>> {
        let rows = sqlx::query(
            "SELECT f.friend_user_id, u.username, f.created_at_unix \
             FROM friendships f JOIN users u ON u.user_id = f.friend_user_id \
             WHERE f.user_id = $1 \
             ORDER BY f.created_at_unix DESC, f.friend_user_id DESC",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                Ok(FriendRecord {
                    user_id: decode_id(row, "friend_user_id")?,
                    username: row.try_get("username")?,
                    created_at_unix: row.try_get("created_at_unix")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn create_friend_request(
        &self,
        request: NewFriendRequest,
        outbox: OutboxFor<'_, FriendRequestRecord>,
    ) -> StoreResult<Option<FriendRequestRecord>> {
        let (sender, recipient) = (request.sender_user_id, request.recipient_user_id);
        if sender == recipient {
            return Ok(None);
        }
        let (low, high) = if sender < recipient {
            (sender, recipient)
        } else {
            (recipient, sender)
        };
        let mut tx = self.pool.begin().await?;
        // One statement decides: the recipient exists, they are not friends,
        // and (the pair's unique key) nothing is pending between them.
        let inserted = sqlx::query(
            "INSERT INTO friend_requests \
             (request_id, sender_user_id, recipient_user_id, user_low, user_high, created_at_unix) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE EXISTS (SELECT 1 FROM users WHERE user_id = $3) \
               AND NOT EXISTS (SELECT 1 FROM friendships WHERE user_id = $2 AND friend_user_id = $3) \
             ON CONFLICT (user_low, user_high) DO NOTHING \
             RETURNING request_id",
        )
        .bind(request.request_id.to_string())
        .bind(sender.to_string())
        .bind(recipient.to_string())
        .bind(low.to_string())
        .bind(high.to_string())
        .bind(request.created_at_unix)
        .fetch_optional(&mut *tx)
        .await
        .map_err(conflict_on("request_id"))?;
        if inserted.is_none() {
            return Ok(None);
        }
        let row = sqlx::query(sql(&REQUEST_BY_ID_SQL))
            .bind(request.request_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let record = decode_request(&row)?;
        Self::enqueue_outbox_all(&mut tx, outbox(&record)).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn friend_requests(&self, user_id: UserId) -> StoreResult<Vec<FriendRequestRecord>> {
        let rows = sqlx::query(sql(&REQUESTS_OF_USER_SQL))
            .bind(user_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(decode_request).collect::<Result<_, _>>()?)
    }

    async fn accept_friend_request(
        &self,
        request_id: Ulid,
        recipient_user_id: UserId,
        now_unix: i64,
        outbox: OutboxFor<'_, AcceptedFriendRequest>,
    ) -> StoreResult<Option<AcceptedFriendRequest>> {
        let mut tx = self.pool.begin().await?;
        // The conditional DELETE comes first and decides: it takes the write
        // lock at once (SQLite) or locks the row (Postgres), so a request
        // accepted twice at once becomes one friendship and one 404.
        let Some(deleted) = sqlx::query(
            "DELETE FROM friend_requests WHERE request_id = $1 AND recipient_user_id = $2 \
             RETURNING sender_user_id, created_at_unix",
        )
        .bind(request_id.to_string())
        .bind(recipient_user_id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let sender_user_id: UserId = decode_id(&deleted, "sender_user_id")?;
        let created_at_unix: i64 = deleted.try_get("created_at_unix")?;
        let (sender, recipient) = (sender_user_id.to_string(), recipient_user_id.to_string());
        // DO NOTHING keeps an existing friendship and its date (a request
        // may have slipped in while an earlier one was being accepted).
        sqlx::query(
            "INSERT INTO friendships (user_id, friend_user_id, created_at_unix) \
             VALUES ($1, $2, $3), ($2, $1, $3) \
             ON CONFLICT (user_id, friend_user_id) DO NOTHING",
        )
        .bind(sender.clone())
        .bind(recipient.clone())
        .bind(now_unix)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT f.created_at_unix, s.username AS sender_username, \
             p.username AS recipient_username \
             FROM friendships f \
             JOIN users s ON s.user_id = f.user_id \
             JOIN users p ON p.user_id = f.friend_user_id \
             WHERE f.user_id = $1 AND f.friend_user_id = $2",
        )
        .bind(sender)
        .bind(recipient)
        .fetch_one(&mut *tx)
        .await?;
        let accepted = AcceptedFriendRequest {
            request: FriendRequestRecord {
                request_id,
                sender_user_id,
                sender_username: row.try_get("sender_username")?,
                recipient_user_id,
                recipient_username: row.try_get("recipient_username")?,
                created_at_unix,
            },
            friendship_created_at_unix: row.try_get("created_at_unix")?,
        };
        Self::enqueue_outbox_all(&mut tx, outbox(&accepted)).await?;
        tx.commit().await?;
        Ok(Some(accepted))
    }

    async fn delete_friend_request(
        &self,
        request_id: Ulid,
        party_user_id: UserId,
        outbox: OutboxFor<'_, FriendRequestParties>,
    ) -> StoreResult<Option<FriendRequestParties>> {
        self.delete_one_with_outbox(
            "DELETE FROM friend_requests \
             WHERE request_id = $1 AND (sender_user_id = $2 OR recipient_user_id = $2) \
             RETURNING sender_user_id, recipient_user_id",
            [request_id.to_string(), party_user_id.to_string()],
            |row| {
                Ok(FriendRequestParties {
                    sender_user_id: decode_id(row, "sender_user_id")?,
                    recipient_user_id: decode_id(row, "recipient_user_id")?,
                })
            },
            outbox,
        )
        .await
    }

    async fn remove_friend(
        &self,
        user_id: UserId,
        friend_user_id: UserId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        self.delete_with_outbox(
            "DELETE FROM friendships \
             WHERE (user_id = $1 AND friend_user_id = $2) \
                OR (user_id = $2 AND friend_user_id = $1) \
             RETURNING user_id",
            [user_id.to_string(), friend_user_id.to_string()],
            outbox,
        )
        .await
    }
}

// `sql.rs` keeps its user decoder private; this area returns users from its
// own statements, so it decodes them here.

fn decode_request<R>(row: &R) -> Result<FriendRequestRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(FriendRequestRecord {
        request_id: decode_id(row, "request_id")?,
        sender_user_id: decode_id(row, "sender_user_id")?,
        sender_username: row.try_get("sender_username")?,
        recipient_user_id: decode_id(row, "recipient_user_id")?,
        recipient_username: row.try_get("recipient_username")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::{conformance, new_id, no_events};
    use crate::store::{GuildRecord, NewUser, Store, StoreError, Visibility};

    const NOW: i64 = 1_700_000_000;

    conformance!(
        profile_update_changes_only_given_fields_and_keeps_usernames_unique,
        users_by_ids_keeps_the_asked_order_once_each_across_batches,
        profile_images_replace_and_bump_versions_per_kind,
        friend_request_lifecycle,
        friend_requests_are_unique_per_pair_and_refuse_strangers_and_friends,
        only_a_party_deletes_a_request,
        profile_audience_is_friends_and_guilds,
    );

    async fn user(store: &dyn Store, name: &str) -> UserId {
        let user_id = new_id();
        store
            .create_user(NewUser {
                user_id,
                username: name.to_owned(),
                password_hash: "hash".to_owned(),
                created_at_unix: NOW,
            })
            .await
            .unwrap();
        user_id
    }

    fn request(sender: UserId, recipient: UserId, at: i64) -> NewFriendRequest {
        NewFriendRequest {
            request_id: new_id(),
            sender_user_id: sender,
            recipient_user_id: recipient,
            created_at_unix: at,
        }
    }

    fn image(byte: u8) -> ProfileImage {
        ProfileImage {
            content_type: "image/png".to_owned(),
            sha256_hex: format!("{byte:064x}"),
            bytes: vec![byte; 16],
        }
    }

    async fn profile_update_changes_only_given_fields_and_keeps_usernames_unique(
        store: Arc<dyn Store>,
    ) {
        let alice = user(store.as_ref(), "alice").await;
        user(store.as_ref(), "bob").await;

        let about = ProfileChange {
            username: None,
            about_markdown: Some("hi *there*".to_owned()),
        };
        let updated = store
            .update_profile(alice, about, Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (updated.username.as_str(), updated.about_markdown.as_str()),
            ("alice", "hi *there*")
        );

        let rename = ProfileChange {
            username: Some("alice2".to_owned()),
            about_markdown: None,
        };
        let updated = store
            .update_profile(alice, rename, Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (updated.username.as_str(), updated.about_markdown.as_str()),
            ("alice2", "hi *there*")
        );

        // A taken name changes nothing, not even the other field.
        let taken = ProfileChange {
            username: Some("bob".to_owned()),
            about_markdown: Some("changed".to_owned()),
        };
        assert!(matches!(
            store.update_profile(alice, taken, Vec::new()).await,
            Err(StoreError::Conflict("username"))
        ));
        let stored = store.user_by_id(alice).await.unwrap().unwrap();
        assert_eq!(
            (stored.username.as_str(), stored.about_markdown.as_str()),
            ("alice2", "hi *there*")
        );

        let unknown = store
            .update_profile(new_id(), ProfileChange::default(), Vec::new())
            .await
            .unwrap();
        assert_eq!(unknown, None);
    }

    async fn users_by_ids_keeps_the_asked_order_once_each_across_batches(store: Arc<dyn Store>) {
        let a = user(store.as_ref(), "user_a").await;
        let b = user(store.as_ref(), "user_b").await;
        // More ids than one batch, with the known ones at both ends, one
        // repeated, and unknown ones in between.
        let mut ids = vec![b];
        ids.extend((0..USER_LOOKUP_BATCH).map(|_| new_id::<UserId>()));
        ids.extend([a, b]);
        let found = store.users_by_ids(&ids).await.unwrap();
        let got: Vec<_> = found
            .iter()
            .map(|u| (u.user_id, u.username.as_str(), u.avatar_version))
            .collect();
        assert_eq!(got, [(b, "user_b", 0), (a, "user_a", 0)]);
        assert!(store.users_by_ids(&[]).await.unwrap().is_empty());
    }

    async fn profile_images_replace_and_bump_versions_per_kind(store: Arc<dyn Store>) {
        let alice = user(store.as_ref(), "alice").await;
        assert_eq!(
            store.profile_image(alice, ImageKind::Avatar).await.unwrap(),
            None
        );

        let first = store
            .set_profile_image(alice, ImageKind::Avatar, image(1), NOW, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.avatar_version, first.banner_version), (NOW, 0));
        // Same second: previous + 1. Clock behind: still previous + 1.
        let second = store
            .set_profile_image(alice, ImageKind::Avatar, image(2), NOW, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.avatar_version, NOW + 1);
        let third = store
            .set_profile_image(alice, ImageKind::Avatar, image(3), NOW - 100, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.avatar_version, NOW + 2);
        assert_eq!(
            store.profile_image(alice, ImageKind::Avatar).await.unwrap(),
            Some(image(3))
        );

        let banner = store
            .set_profile_image(alice, ImageKind::Banner, image(9), NOW + 50, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (banner.avatar_version, banner.banner_version),
            (NOW + 2, NOW + 50)
        );
        assert_eq!(
            store.profile_image(alice, ImageKind::Banner).await.unwrap(),
            Some(image(9))
        );

        // An unknown user stores nothing.
        let ghost = new_id();
        assert_eq!(
            store
                .set_profile_image(ghost, ImageKind::Avatar, image(4), NOW, &no_events)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.profile_image(ghost, ImageKind::Avatar).await.unwrap(),
            None
        );
    }

    async fn friend_request_lifecycle(store: Arc<dyn Store>) {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let new = request(alice, bob, NOW);
        let created = store
            .create_friend_request(new.clone(), &no_events)
            .await
            .unwrap()
            .unwrap();
        let expected = FriendRequestRecord {
            request_id: new.request_id,
            sender_user_id: alice,
            sender_username: "alice".to_owned(),
            recipient_user_id: bob,
            recipient_username: "bob".to_owned(),
            created_at_unix: NOW,
        };
        assert_eq!(created, expected);
        assert_eq!(
            store.friend_requests(alice).await.unwrap(),
            std::slice::from_ref(&expected)
        );
        assert_eq!(
            store.friend_requests(bob).await.unwrap(),
            std::slice::from_ref(&expected)
        );

        // The sender cannot accept their own request.
        assert_eq!(
            store
                .accept_friend_request(new.request_id, alice, NOW + 5, &no_events)
                .await
                .unwrap(),
            None
        );
        assert!(store.friends(alice).await.unwrap().is_empty());

        let accepted = store
            .accept_friend_request(new.request_id, bob, NOW + 5, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            accepted,
            AcceptedFriendRequest {
                request: expected,
                friendship_created_at_unix: NOW + 5,
            }
        );
        // Accepted once only.
        assert_eq!(
            store
                .accept_friend_request(new.request_id, bob, NOW + 6, &no_events)
                .await
                .unwrap(),
            None
        );
        assert!(store.friend_requests(bob).await.unwrap().is_empty());
        let of_alice = store.friends(alice).await.unwrap();
        assert_eq!(
            of_alice,
            [FriendRecord {
                user_id: bob,
                username: "bob".to_owned(),
                created_at_unix: NOW + 5,
            }]
        );
        let of_bob = store.friends(bob).await.unwrap();
        assert_eq!(of_bob.len(), 1);
        assert_eq!(of_bob[0].user_id, alice);

        assert!(store.remove_friend(bob, alice, Vec::new()).await.unwrap());
        assert!(!store.remove_friend(alice, bob, Vec::new()).await.unwrap());
        assert!(store.friends(alice).await.unwrap().is_empty());
        assert!(store.friends(bob).await.unwrap().is_empty());
    }

    async fn friend_requests_are_unique_per_pair_and_refuse_strangers_and_friends(
        store: Arc<dyn Store>,
    ) {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let carol = user(store.as_ref(), "carol").await;

        assert!(
            store
                .create_friend_request(request(alice, alice, NOW), &no_events)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .create_friend_request(request(alice, new_id(), NOW), &no_events)
                .await
                .unwrap()
                .is_none()
        );
        let first = store
            .create_friend_request(request(alice, bob, NOW), &no_events)
            .await
            .unwrap()
            .unwrap();
        // Pending either way.
        for (from, to) in [(alice, bob), (bob, alice)] {
            assert!(
                store
                    .create_friend_request(request(from, to, NOW + 1), &no_events)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // Other pairs are independent; the newest comes first.
        let second = store
            .create_friend_request(request(carol, alice, NOW + 2), &no_events)
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<_> = store
            .friend_requests(alice)
            .await
            .unwrap()
            .iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, [second.request_id, first.request_id]);

        // Friends cannot request each other again.
        store
            .accept_friend_request(first.request_id, bob, NOW + 3, &no_events)
            .await
            .unwrap()
            .unwrap();
        for (from, to) in [(alice, bob), (bob, alice)] {
            assert!(
                store
                    .create_friend_request(request(from, to, NOW + 4), &no_events)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }

    async fn only_a_party_deletes_a_request(store: Arc<dyn Store>) {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let mallory = user(store.as_ref(), "mallory").await;
        for party in [alice, bob] {
            let created = store
                .create_friend_request(request(alice, bob, NOW), &no_events)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                store
                    .delete_friend_request(created.request_id, mallory, &no_events)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                store
                    .delete_friend_request(created.request_id, party, &no_events)
                    .await
                    .unwrap(),
                Some(FriendRequestParties {
                    sender_user_id: alice,
                    recipient_user_id: bob,
                })
            );
            assert_eq!(
                store
                    .delete_friend_request(created.request_id, party, &no_events)
                    .await
                    .unwrap(),
                None
            );
        }
        assert!(store.friend_requests(alice).await.unwrap().is_empty());
    }

    async fn profile_audience_is_friends_and_guilds(store: Arc<dyn Store>) {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let guild_id = new_id();
        store
            .create_guild(
                GuildRecord {
                    guild_id,
                    name: "g".to_owned(),
                    visibility: Visibility::Private,
                    created_by: alice,
                    created_at_unix: NOW,
                },
                crate::store::BuiltinMasks::FOR_TESTS,
            )
            .await
            .unwrap();
        assert_eq!(
            store.profile_audience(alice).await.unwrap(),
            ProfileAudience {
                friend_ids: Vec::new(),
                guild_ids: vec![guild_id],
            }
        );
        let created = store
            .create_friend_request(request(bob, alice, NOW), &no_events)
            .await
            .unwrap()
            .unwrap();
        store
            .accept_friend_request(created.request_id, alice, NOW, &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.profile_audience(alice).await.unwrap(),
            ProfileAudience {
                friend_ids: vec![bob],
                guild_ids: vec![guild_id],
            }
        );
        assert_eq!(
            store.profile_audience(bob).await.unwrap(),
            ProfileAudience {
                friend_ids: vec![alice],
                guild_ids: Vec::new(),
            }
        );
    }
}
