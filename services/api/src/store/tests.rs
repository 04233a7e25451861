//! The store conformance suite: each case is written once against `dyn Store`
//! and runs on SQLite (in memory) and on Postgres (in a fresh schema), so the
//! two backends cannot drift apart.
//!
//! Postgres runs when `TEST_DATABASE_URL` names a server, as in CI. Without
//! it the Postgres half of each case passes after saying loudly that it was
//! skipped, so a green local run without Postgres is not mistaken for a full
//! one.

use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Once};

use filament_ids::{ChannelId, GuildId, MessageId, RoleId, SessionId, UserId};
use sqlx::{Connection as _, Executor as _, PgConnection};
use ulid::Ulid;

use super::postgres::quote_identifier;
use super::{
    ChannelKind, ChannelRecord, CoreStore as _, GuildRecord, HistoryCursor, MemberRecord,
    MemberRole, MessageRecord, NewSession, NewUser, OutboxEvent, PostgresStore, ProfileChange,
    RoleRecord, RotateOutcome, SqliteStore, Store, StoreError, UserRecord, Visibility,
};

const POSTGRES_URL_VAR: &str = "TEST_DATABASE_URL";

/// A fixed "now" keeps expiry arithmetic readable and the cases
/// deterministic.
const NOW: i64 = 1_700_000_000;

/// Declares each case once per backend: `store::tests::sqlite::<case>` and
/// `store::tests::postgres::<case>`.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    $crate::store::tests::on_sqlite(super::$case).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    $crate::store::tests::on_postgres(super::$case).await;
                }
            )+
        }
    };
}

pub(crate) use conformance;

/// A fresh id of whichever kind the caller needs.
pub(crate) fn new_id<T: From<Ulid>>() -> T {
    T::from(Ulid::generate())
}

/// An outbox closure that builds no event, for the writes of cases that do
/// not look at events (`store/outbox.rs` has those that do).
pub(crate) fn no_events<T: ?Sized>(_: &T) -> Vec<OutboxEvent> {
    Vec::new()
}

/// A user who owns a guild with one text channel: where the message-path
/// suites (change log, outbox, idempotency keys) write.
pub(crate) struct TextChannel {
    pub(crate) author: UserId,
    pub(crate) guild_id: GuildId,
    pub(crate) channel_id: ChannelId,
}

/// A new user with a unique name.
pub(crate) async fn new_user(store: &dyn Store) -> UserId {
    let user_id: UserId = new_id();
    store
        .create_user(NewUser {
            user_id,
            username: format!("u{}", &user_id.to_string()[16..]).to_lowercase(),
            password_hash: "hash".to_owned(),
            created_at_unix: NOW,
        })
        .await
        .expect("create user");
    user_id
}

/// A role that is not built in, without a colour.
pub(crate) fn custom_role(
    guild_id: GuildId,
    name: &str,
    position: i64,
    permissions: u64,
) -> RoleRecord {
    RoleRecord {
        role_id: RoleId::generate(),
        guild_id,
        name: name.to_owned(),
        position,
        builtin: None,
        permissions,
        color_hex: None,
        created_at_unix: NOW,
    }
}

impl TextChannel {
    pub(crate) async fn create(store: &dyn Store) -> Self {
        let author = new_user(store).await;
        let guild_id = new_id();
        store
            .create_guild(
                GuildRecord {
                    guild_id,
                    name: "g".to_owned(),
                    visibility: Visibility::Private,
                    created_by: author,
                    created_at_unix: 1,
                },
                crate::store::BuiltinMasks::FOR_TESTS,
            )
            .await
            .expect("guild");
        let channel_id = new_id();
        store
            .create_channel(
                ChannelRecord {
                    channel_id,
                    guild_id,
                    name: "c".to_owned(),
                    kind: ChannelKind::Text,
                    created_at_unix: 1,
                },
                Vec::new(),
            )
            .await
            .expect("channel");
        Self {
            author,
            guild_id,
            channel_id,
        }
    }

    /// A new message by the author in the channel.
    pub(crate) fn message(&self, content: &str) -> MessageRecord {
        MessageRecord {
            message_id: MessageId::generate(),
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            author_id: self.author,
            content: content.to_owned(),
            created_at_unix: 1,
        }
    }
}

conformance!(
    user_create_and_lookup,
    duplicate_username_is_a_conflict,
    usernames_are_unique_in_any_case_and_keep_their_case,
    rotate_session_happy_path,
    replayed_refresh_token_revokes_the_session,
    expired_or_unknown_session_is_invalid,
    concurrent_double_use_rotates_once_and_revokes,
    revoke_session_needs_the_current_hash,
    a_revoked_session_no_longer_authenticates,
    create_guild_makes_the_creator_owner,
    create_guild_is_atomic,
    guilds_for_user_newest_first_limited_members_only,
    add_member_is_idempotent,
    members_page_by_user_id,
    channels_in_creation_order,
    messages_paginate_newest_first,
    messages_after_a_cursor_come_oldest_first,
    count_guilds_created_by,
);

// --- harness -----------------------------------------------------------------

pub(crate) async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = SqliteStore::in_memory()
        .await
        .expect("open in-memory SQLite store");
    case(Arc::new(store)).await;
}

pub(crate) async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
    else {
        announce_postgres_skipped();
        return;
    };
    let schema = format!("test_{}", Ulid::generate().to_string().to_lowercase());
    let store = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema)
            .await
            .expect("connect to TEST_DATABASE_URL in a fresh schema"),
    );
    // Spawned so that a failing case is caught here and its schema is still
    // dropped before the panic is passed on.
    let outcome = tokio::spawn(case(store.clone())).await;
    store.close().await;
    drop_schema(&url, &schema).await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

fn announce_postgres_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Written to the real stderr, not with `eprintln!`, which the test
        // harness captures and hides for passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {POSTGRES_URL_VAR} is unset; Postgres store conformance not run"
        );
    });
}

/// Best effort: a leftover schema only costs space in a test database.
async fn drop_schema(url: &str, schema: &str) {
    let dropped = async {
        let mut connection = PgConnection::connect(url).await?;
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_identifier(schema));
        connection.execute(sqlx::AssertSqlSafe(statement)).await?;
        connection.close().await
    };
    if let Err(error) = dropped.await {
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not drop schema {schema}: {error}"
        );
    }
}

// --- fixtures ----------------------------------------------------------------

async fn create_user(store: &dyn Store, username: &str) -> UserId {
    let user_id = new_id();
    store
        .create_user(NewUser {
            user_id,
            username: username.to_owned(),
            password_hash: format!("hash-of-{username}"),
            created_at_unix: NOW,
        })
        .await
        .expect("create user");
    user_id
}

fn guild_record(guild_id: GuildId, created_by: UserId, created_at_unix: i64) -> GuildRecord {
    GuildRecord {
        guild_id,
        name: format!("guild {guild_id}"),
        visibility: Visibility::Private,
        created_by,
        created_at_unix,
    }
}

async fn create_guild(store: &dyn Store, created_by: UserId, created_at_unix: i64) -> GuildRecord {
    let guild = guild_record(new_id(), created_by, created_at_unix);
    store
        .create_guild(guild.clone(), crate::store::BuiltinMasks::FOR_TESTS)
        .await
        .expect("create guild");
    guild
}

async fn create_channel(
    store: &dyn Store,
    channel_id: ChannelId,
    guild_id: GuildId,
    created_at_unix: i64,
) -> ChannelRecord {
    let channel = ChannelRecord {
        channel_id,
        guild_id,
        name: format!("channel-{created_at_unix}"),
        kind: ChannelKind::Text,
        created_at_unix,
    };
    store
        .create_channel(channel.clone(), Vec::new())
        .await
        .expect("create channel");
    channel
}

async fn create_session(
    store: &dyn Store,
    user_id: UserId,
    hash: &str,
    expires_at_unix: i64,
) -> SessionId {
    let session_id = new_id();
    store
        .create_session(NewSession {
            session_id,
            user_id,
            refresh_token_hash: hash.to_owned(),
            expires_at_unix,
        })
        .await
        .expect("create session");
    session_id
}

/// Makes the pool open a second connection now, so that two racing calls
/// that follow really run at the same time instead of one finishing while
/// the other is still connecting.
async fn open_two_connections(store: &dyn Store, user_id: UserId) {
    let (first, second) = tokio::join!(store.user_by_id(user_id), store.user_by_id(user_id));
    first.expect("warm-up query");
    second.expect("warm-up query");
}

/// Ids whose order is chosen by the test: ULIDs sort by their time part.
fn ulid_at<T: From<Ulid>>(timestamp_ms: u64) -> T {
    T::from(Ulid::from_parts(timestamp_ms, 0))
}

async fn rotate(
    store: &dyn Store,
    session_id: SessionId,
    presented: &str,
    new: &str,
    now: i64,
) -> RotateOutcome {
    store
        .rotate_session(session_id, presented, new, now + 3600, now, &no_events)
        .await
        .expect("rotate session")
}

// --- users -------------------------------------------------------------------

async fn user_create_and_lookup(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let expected = UserRecord {
        user_id,
        username: "alice".to_owned(),
        password_hash: "hash-of-alice".to_owned(),
        about_markdown: String::new(),
        avatar_version: 0,
        banner_version: 0,
        created_at_unix: NOW,
    };

    let by_id = store.user_by_id(user_id).await.expect("user by id");
    assert_eq!(by_id, Some(expected.clone()));
    let by_name = store.user_by_username("alice").await.expect("user by name");
    assert_eq!(by_name, Some(expected));

    assert_eq!(store.user_by_id(new_id()).await.expect("unknown id"), None);
    assert_eq!(
        store.user_by_username("bob").await.expect("unknown name"),
        None
    );
}

async fn duplicate_username_is_a_conflict(store: Arc<dyn Store>) {
    let first = create_user(&*store, "alice").await;
    let second = store
        .create_user(NewUser {
            user_id: UserId::generate(),
            username: "alice".to_owned(),
            password_hash: "other".to_owned(),
            created_at_unix: NOW,
        })
        .await;
    assert!(
        matches!(second, Err(StoreError::Conflict("username"))),
        "expected Conflict(\"username\"), got {second:?}"
    );
    let kept = store.user_by_username("alice").await.expect("lookup");
    assert_eq!(kept.map(|user| user.user_id), Some(first));
}

/// `victim` and `VICTIM` are one account: a second registration in another
/// case, or a rename onto someone else's name in another case, is taken;
/// lookups fold case; the stored name keeps its case, and its owner may
/// change that case.
async fn usernames_are_unique_in_any_case_and_keep_their_case(store: Arc<dyn Store>) {
    let victim = create_user(&*store, "Victim.1").await;
    for twin in ["victim.1", "VICTIM.1", "vIcTiM.1"] {
        let again = store
            .create_user(NewUser {
                user_id: UserId::generate(),
                username: twin.to_owned(),
                password_hash: "other".to_owned(),
                created_at_unix: NOW,
            })
            .await;
        assert!(
            matches!(again, Err(StoreError::Conflict("username"))),
            "{twin}: {again:?}"
        );
    }
    for spelling in ["Victim.1", "victim.1", "VICTIM.1"] {
        let found = store.user_by_username(spelling).await.expect("lookup");
        assert_eq!(
            found.map(|user| (user.user_id, user.username)),
            Some((victim, "Victim.1".to_owned())),
            "{spelling}"
        );
    }
    assert_eq!(
        store.user_by_username("victim_1").await.expect("lookup"),
        None
    );

    let rename = |username: &str| ProfileChange {
        username: Some(username.to_owned()),
        about_markdown: None,
    };
    let other = create_user(&*store, "other").await;
    assert!(
        matches!(
            store
                .update_profile(other, rename("VICTIM.1"), Vec::new())
                .await,
            Err(StoreError::Conflict("username"))
        ),
        "someone else's name in another case is taken"
    );
    let renamed = store
        .update_profile(victim, rename("VICTIM.1"), Vec::new())
        .await
        .expect("own name in another case");
    assert_eq!(
        renamed.map(|user| user.username),
        Some("VICTIM.1".to_owned())
    );
    let found = store.user_by_username("victim.1").await.expect("lookup");
    assert_eq!(found.map(|user| user.user_id), Some(victim));
}

// --- migration 0008 on existing twins ------------------------------------------

/// The statements of `migrations/<backend>/NNNN_*.sql` up to and including
/// `last`, in order.
fn migrations_up_to(backend: &str, last: u32) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.get(..4))
                .and_then(|number| number.parse::<u32>().ok())
                .is_some_and(|number| number <= last)
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).expect("migration"))
        .collect()
}

/// Rows inserted before 0008: `victim` three times over (the oldest one
/// in mixed case), and a bystander.
const TWINS: &str = "INSERT INTO users (user_id, username, password_hash, created_at_unix) VALUES \
     ('01HZZZZZZZZZZZZZZZZZZZZZZ3', 'VICTIM', 'h', 1700000002), \
     ('01HZZZZZZZZZZZZZZZZZZZZZZ1', 'Victim', 'h', 1700000001), \
     ('01HZZZZZZZZZZZZZZZZZZZZZZ2', 'victim', 'h', 1700000002), \
     ('01HZZZZZZZZZZZZZZZZZZZZZZ4', 'bystander', 'h', 1700000000)";

const NAMES: &str = "SELECT user_id, username FROM users ORDER BY user_id";

/// What 0008 must leave: the oldest twin keeps its name, the later ones
/// are renamed to their ids, the bystander is untouched.
fn twins_after_0008() -> Vec<(String, String)> {
    [
        ("01HZZZZZZZZZZZZZZZZZZZZZZ1", "Victim"),
        ("01HZZZZZZZZZZZZZZZZZZZZZZ2", "01HZZZZZZZZZZZZZZZZZZZZZZ2"),
        ("01HZZZZZZZZZZZZZZZZZZZZZZ3", "01HZZZZZZZZZZZZZZZZZZZZZZ3"),
        ("01HZZZZZZZZZZZZZZZZZZZZZZ4", "bystander"),
    ]
    .map(|(id, name)| (id.to_owned(), name.to_owned()))
    .to_vec()
}

#[tokio::test]
async fn sqlite_migration_0008_renames_later_case_twins() {
    use sqlx::SqliteConnection;
    let mut connection = SqliteConnection::connect("sqlite::memory:")
        .await
        .expect("sqlite");
    for migration in migrations_up_to("sqlite", 7) {
        connection
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(migration)))
            .await
            .expect("0001-0007");
    }
    connection.execute(TWINS).await.expect("twins");
    for migration in migrations_up_to("sqlite", 8).split_off(7) {
        connection
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(migration)))
            .await
            .expect("0008 applies over twins");
    }
    let names: Vec<(String, String)> = sqlx::query_as(NAMES)
        .fetch_all(&mut connection)
        .await
        .expect("names");
    assert_eq!(names, twins_after_0008());
}

#[tokio::test]
async fn postgres_migration_0008_renames_later_case_twins() {
    let Some(url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
    else {
        announce_postgres_skipped();
        return;
    };
    let schema = format!("test_{}", Ulid::generate().to_string().to_lowercase());
    let mut connection = PgConnection::connect(&url).await.expect("postgres");
    let quoted = quote_identifier(&schema);
    for statement in [
        format!("CREATE SCHEMA {quoted}"),
        format!("SET search_path TO {quoted}"),
    ] {
        connection
            .execute(sqlx::AssertSqlSafe(statement))
            .await
            .expect("schema");
    }
    let migrated = async {
        for migration in migrations_up_to("postgres", 7) {
            connection
                .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(migration)))
                .await?;
        }
        connection.execute(TWINS).await?;
        for migration in migrations_up_to("postgres", 8).split_off(7) {
            connection
                .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(migration)))
                .await?;
        }
        sqlx::query_as::<_, (String, String)>(NAMES)
            .fetch_all(&mut connection)
            .await
    }
    .await;
    connection.close().await.expect("close");
    drop_schema(&url, &schema).await;
    assert_eq!(
        migrated.expect("0008 applies over twins"),
        twins_after_0008()
    );
}

// --- sessions ----------------------------------------------------------------

async fn rotate_session_happy_path(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let session_id = create_session(&*store, user_id, "h1", NOW + 100).await;

    assert_eq!(
        rotate(&*store, session_id, "h1", "h2", NOW).await,
        RotateOutcome::Rotated { user_id }
    );
    // Past the original expiry but within the one the rotation stored.
    assert_eq!(
        rotate(&*store, session_id, "h2", "h3", NOW + 1000).await,
        RotateOutcome::Rotated { user_id }
    );
}

async fn replayed_refresh_token_revokes_the_session(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let session_id = create_session(&*store, user_id, "h1", NOW + 100).await;
    assert_eq!(
        rotate(&*store, session_id, "h1", "h2", NOW).await,
        RotateOutcome::Rotated { user_id }
    );

    assert_eq!(
        rotate(&*store, session_id, "h1", "h-replay", NOW).await,
        RotateOutcome::Replayed { user_id }
    );
    // The replay revoked the session: the legitimate latest token is dead too.
    assert_eq!(
        rotate(&*store, session_id, "h2", "h3", NOW).await,
        RotateOutcome::Invalid
    );
    assert_eq!(
        store
            .revoke_session(session_id, "h2", &no_events)
            .await
            .expect("revoke"),
        None,
        "the session should already be revoked"
    );
}

async fn a_revoked_session_no_longer_authenticates(store: Arc<dyn Store>) {
    let alice = create_user(&*store, "alice").await;
    let bob = create_user(&*store, "bob").await;
    let session_id = create_session(&*store, alice, "h1", NOW + 100).await;
    let found = store
        .user_in_session(alice, session_id)
        .await
        .expect("read")
        .expect("alice in her session");
    assert_eq!(found.user_id, alice);
    // Someone else's session, or an unknown one, is not hers.
    assert!(
        store
            .user_in_session(bob, session_id)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store
            .user_in_session(alice, new_id())
            .await
            .expect("read")
            .is_none()
    );
    assert_eq!(
        store
            .revoke_session(session_id, "h1", &no_events)
            .await
            .expect("revoke"),
        Some(alice)
    );
    assert!(
        store
            .user_in_session(alice, session_id)
            .await
            .expect("read")
            .is_none()
    );
}

async fn expired_or_unknown_session_is_invalid(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let session_id = create_session(&*store, user_id, "h1", NOW + 10).await;

    // Live means now < expires_at: at the expiry second it is dead, and a
    // wrong hash on a dead session is not a replay.
    assert_eq!(
        rotate(&*store, session_id, "wrong", "h2", NOW + 10).await,
        RotateOutcome::Invalid
    );
    assert_eq!(
        rotate(&*store, session_id, "h1", "h2", NOW + 10).await,
        RotateOutcome::Invalid
    );
    // Neither attempt revoked it: a moment earlier it was still live.
    assert_eq!(
        rotate(&*store, session_id, "h1", "h2", NOW + 9).await,
        RotateOutcome::Rotated { user_id }
    );

    assert_eq!(
        rotate(&*store, new_id(), "h1", "h2", NOW).await,
        RotateOutcome::Invalid
    );
}

async fn concurrent_double_use_rotates_once_and_revokes(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let session_id = create_session(&*store, user_id, "h1", NOW + 100).await;
    open_two_connections(&*store, user_id).await;

    let (first, second) = tokio::join!(
        rotate(&*store, session_id, "h1", "h-a", NOW),
        rotate(&*store, session_id, "h1", "h-b", NOW),
    );
    let mut outcomes = [first, second];
    outcomes.sort_by_key(|outcome| matches!(outcome, RotateOutcome::Replayed { .. }));
    assert_eq!(
        outcomes,
        [
            RotateOutcome::Rotated { user_id },
            RotateOutcome::Replayed { user_id }
        ]
    );
    for hash in ["h-a", "h-b"] {
        assert_eq!(
            rotate(&*store, session_id, hash, "h-next", NOW).await,
            RotateOutcome::Invalid,
            "the double use must leave the session revoked"
        );
    }
}

async fn revoke_session_needs_the_current_hash(store: Arc<dyn Store>) {
    let user_id = create_user(&*store, "alice").await;
    let session_id = create_session(&*store, user_id, "h1", NOW + 100).await;

    assert_eq!(
        store
            .revoke_session(session_id, "wrong", &no_events)
            .await
            .expect("revoke"),
        None
    );
    assert_eq!(
        store
            .revoke_session(new_id(), "h1", &no_events)
            .await
            .expect("revoke"),
        None
    );
    // A failed logout leaves the session alone.
    assert_eq!(
        rotate(&*store, session_id, "h1", "h2", NOW).await,
        RotateOutcome::Rotated { user_id }
    );
    // The rotated-away hash no longer logs out.
    assert_eq!(
        store
            .revoke_session(session_id, "h1", &no_events)
            .await
            .expect("revoke"),
        None
    );

    assert_eq!(
        store
            .revoke_session(session_id, "h2", &no_events)
            .await
            .expect("revoke"),
        Some(user_id),
        "the logout names whose session it ended"
    );
    assert_eq!(
        store
            .revoke_session(session_id, "h2", &no_events)
            .await
            .expect("revoke twice"),
        None
    );
    assert_eq!(
        rotate(&*store, session_id, "h2", "h3", NOW).await,
        RotateOutcome::Invalid
    );
}

// --- guilds and members --------------------------------------------------------

async fn create_guild_makes_the_creator_owner(store: Arc<dyn Store>) {
    let owner = create_user(&*store, "alice").await;
    let stranger = create_user(&*store, "bob").await;
    let guild = create_guild(&*store, owner, NOW).await;

    assert_eq!(
        store.guild(guild.guild_id).await.expect("guild"),
        Some(guild.clone())
    );
    assert_eq!(
        store.member(guild.guild_id, owner).await.expect("member"),
        Some(MemberRecord {
            guild_id: guild.guild_id,
            user_id: owner,
            role: MemberRole::Owner,
            joined_at_unix: NOW,
        })
    );
    assert_eq!(
        store
            .member(guild.guild_id, stranger)
            .await
            .expect("member"),
        None
    );
    assert_eq!(store.guild(new_id()).await.expect("unknown guild"), None);

    let again = store
        .create_guild(guild.clone(), crate::store::BuiltinMasks::FOR_TESTS)
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict("guild_id"))),
        "expected Conflict(\"guild_id\"), got {again:?}"
    );
}

async fn create_guild_is_atomic(store: Arc<dyn Store>) {
    // The owner membership cannot be inserted for a user that does not
    // exist, so the guild row written before it must be rolled back.
    let guild = guild_record(new_id(), new_id(), NOW);
    let created = store
        .create_guild(guild.clone(), crate::store::BuiltinMasks::FOR_TESTS)
        .await;
    assert!(created.is_err(), "expected an error, got {created:?}");
    assert_eq!(store.guild(guild.guild_id).await.expect("guild"), None);
}

async fn guilds_for_user_newest_first_limited_members_only(store: Arc<dyn Store>) {
    let alice = create_user(&*store, "alice").await;
    let bob = create_user(&*store, "bob").await;
    let oldest = create_guild(&*store, alice, NOW + 100).await;
    // Two guilds created in the same second: the larger id comes first.
    let tied_low = guild_record(ulid_at(1_000), alice, NOW + 300);
    let tied_high = guild_record(ulid_at(2_000), alice, NOW + 300);
    for guild in [&tied_high, &tied_low] {
        store
            .create_guild(guild.clone(), crate::store::BuiltinMasks::FOR_TESTS)
            .await
            .expect("create guild");
    }
    let middle = create_guild(&*store, alice, NOW + 200).await;
    let bobs = create_guild(&*store, bob, NOW + 400).await;

    let listed = store.guilds_for_user(alice, 10).await.expect("guilds");
    assert_eq!(
        listed,
        vec![
            tied_high.clone(),
            tied_low.clone(),
            middle.clone(),
            oldest.clone()
        ]
    );
    let limited = store.guilds_for_user(alice, 2).await.expect("guilds");
    assert_eq!(limited, vec![tied_high.clone(), tied_low]);
    assert_eq!(
        store.guilds_for_user(bob, 10).await.expect("guilds"),
        vec![bobs.clone()]
    );
    assert_eq!(
        store.guilds_for_user(new_id(), 10).await.expect("guilds"),
        vec![]
    );

    let joined = store
        .add_member(MemberRecord {
            guild_id: bobs.guild_id,
            user_id: alice,
            role: MemberRole::Member,
            joined_at_unix: NOW + 500,
        })
        .await
        .expect("add member");
    assert!(joined);
    let listed = store.guilds_for_user(alice, 2).await.expect("guilds");
    assert_eq!(listed, vec![bobs, tied_high]);
}

async fn add_member_is_idempotent(store: Arc<dyn Store>) {
    let owner = create_user(&*store, "alice").await;
    let joiner = create_user(&*store, "bob").await;
    let guild = create_guild(&*store, owner, NOW).await;
    let membership = MemberRecord {
        guild_id: guild.guild_id,
        user_id: joiner,
        role: MemberRole::Member,
        joined_at_unix: NOW + 10,
    };

    assert!(store.add_member(membership.clone()).await.expect("add"));
    assert_eq!(
        store.member(guild.guild_id, joiner).await.expect("member"),
        Some(membership.clone())
    );

    // A second add changes nothing, not even the role or the join time.
    let again = MemberRecord {
        role: MemberRole::Moderator,
        joined_at_unix: NOW + 20,
        ..membership.clone()
    };
    assert!(!store.add_member(again).await.expect("add again"));
    assert_eq!(
        store.member(guild.guild_id, joiner).await.expect("member"),
        Some(membership)
    );
    let owner_again = MemberRecord {
        guild_id: guild.guild_id,
        user_id: owner,
        role: MemberRole::Member,
        joined_at_unix: NOW + 30,
    };
    assert!(!store.add_member(owner_again).await.expect("add owner"));
    let owner_membership = store.member(guild.guild_id, owner).await.expect("member");
    assert_eq!(
        owner_membership.map(|member| member.role),
        Some(MemberRole::Owner)
    );
}

async fn count_guilds_created_by(store: Arc<dyn Store>) {
    let alice = create_user(&*store, "alice").await;
    let bob = create_user(&*store, "bob").await;
    assert_eq!(
        store.count_guilds_created_by(alice).await.expect("count"),
        0
    );

    create_guild(&*store, alice, NOW).await;
    create_guild(&*store, alice, NOW + 1).await;
    let bobs = create_guild(&*store, bob, NOW + 2).await;
    // Membership is not creation.
    store
        .add_member(MemberRecord {
            guild_id: bobs.guild_id,
            user_id: alice,
            role: MemberRole::Member,
            joined_at_unix: NOW + 3,
        })
        .await
        .expect("add member");

    assert_eq!(
        store.count_guilds_created_by(alice).await.expect("count"),
        2
    );
    assert_eq!(store.count_guilds_created_by(bob).await.expect("count"), 1);
    assert_eq!(
        store
            .count_guilds_created_by(new_id())
            .await
            .expect("count"),
        0
    );
}

// --- channels ------------------------------------------------------------------

async fn channels_in_creation_order(store: Arc<dyn Store>) {
    let owner = create_user(&*store, "alice").await;
    let guild = create_guild(&*store, owner, NOW).await;
    let other_guild = create_guild(&*store, owner, NOW).await;

    // Inserted out of order; two share a second and are ordered by id.
    let late_high = create_channel(&*store, ulid_at(3_000), guild.guild_id, NOW + 20).await;
    let early = create_channel(&*store, ulid_at(9_000), guild.guild_id, NOW + 10).await;
    let late_low = create_channel(&*store, ulid_at(2_000), guild.guild_id, NOW + 20).await;
    let elsewhere = create_channel(&*store, ulid_at(1_000), other_guild.guild_id, NOW).await;

    let listed = store.channels(guild.guild_id, 10).await.expect("channels");
    assert_eq!(listed, vec![early.clone(), late_low.clone(), late_high]);
    let limited = store.channels(guild.guild_id, 2).await.expect("channels");
    assert_eq!(limited, vec![early.clone(), late_low]);

    assert_eq!(
        store
            .channel(guild.guild_id, early.channel_id)
            .await
            .expect("channel"),
        Some(early.clone())
    );
    // A channel is only found through its own guild.
    assert_eq!(
        store
            .channel(other_guild.guild_id, early.channel_id)
            .await
            .expect("channel"),
        None
    );
    assert_eq!(
        store
            .channels(other_guild.guild_id, 10)
            .await
            .expect("channels"),
        vec![elsewhere]
    );

    let duplicate = store.create_channel(early, Vec::new()).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict("channel_id"))),
        "expected Conflict(\"channel_id\"), got {duplicate:?}"
    );
}

// --- messages ------------------------------------------------------------------

/// Five messages of a channel, inserted out of order and interleaved with
/// two of another channel of the guild that must never show up; ids are
/// `ulid_at(10_000 + i * 10)` for ours, `10_015` and `10_055` for theirs.
struct History {
    guild_id: GuildId,
    channel_id: ChannelId,
    other_channel_id: ChannelId,
    ours: Vec<MessageRecord>,
    theirs: [MessageRecord; 2],
}

impl History {
    async fn create(store: &dyn Store) -> Self {
        let author = create_user(store, "alice").await;
        let guild = create_guild(store, author, NOW).await;
        let channel = create_channel(store, new_id(), guild.guild_id, NOW).await;
        let other_channel = create_channel(store, new_id(), guild.guild_id, NOW).await;
        let message = |message_id: MessageId, channel_id: ChannelId| MessageRecord {
            message_id,
            guild_id: guild.guild_id,
            channel_id,
            author_id: author,
            content: format!("message {message_id}"),
            created_at_unix: NOW,
        };
        let ours: Vec<MessageRecord> = (0..5)
            .map(|i| message(ulid_at(10_000 + i * 10), channel.channel_id))
            .collect();
        let theirs = [
            message(ulid_at(10_015), other_channel.channel_id),
            message(ulid_at(10_055), other_channel.channel_id),
        ];
        for record in [
            &ours[3], &theirs[0], &ours[0], &ours[4], &theirs[1], &ours[1], &ours[2],
        ] {
            store
                .create_message(record.clone(), None)
                .await
                .expect("create message");
        }
        Self {
            guild_id: guild.guild_id,
            channel_id: channel.channel_id,
            other_channel_id: other_channel.channel_id,
            ours,
            theirs,
        }
    }

    async fn page(
        &self,
        store: &dyn Store,
        cursor: HistoryCursor,
        limit: u32,
    ) -> Vec<MessageRecord> {
        store
            .messages(self.guild_id, self.channel_id, cursor, limit)
            .await
            .expect("messages")
    }
}

async fn messages_paginate_newest_first(store: Arc<dyn Store>) {
    let h = History::create(&*store).await;
    let (ours, theirs) = (&h.ours, &h.theirs);
    let before = |message: &MessageRecord| HistoryCursor::Before(message.message_id);

    let first = h.page(&*store, HistoryCursor::Latest, 2).await;
    assert_eq!(first, vec![ours[4].clone(), ours[3].clone()]);
    let second = h.page(&*store, before(&ours[3]), 2).await;
    assert_eq!(second, vec![ours[2].clone(), ours[1].clone()]);
    let third = h.page(&*store, before(&ours[1]), 2).await;
    assert_eq!(third, vec![ours[0].clone()]);
    assert_eq!(h.page(&*store, before(&ours[0]), 2).await, vec![]);

    let everything = h.page(&*store, HistoryCursor::Latest, 100).await;
    let newest_first: Vec<MessageRecord> = ours.iter().rev().cloned().collect();
    assert_eq!(everything, newest_first);
    // `before` need not be a message of this channel: it is only a bound.
    let before_theirs = h.page(&*store, before(&theirs[1]), 100).await;
    assert_eq!(before_theirs, newest_first);

    let other = store
        .messages(h.guild_id, h.other_channel_id, HistoryCursor::Latest, 100)
        .await
        .expect("messages");
    assert_eq!(other, vec![theirs[1].clone(), theirs[0].clone()]);
    let wrong_guild = store
        .messages(new_id(), h.channel_id, HistoryCursor::Latest, 100)
        .await
        .expect("messages");
    assert_eq!(wrong_guild, vec![]);
}

async fn messages_after_a_cursor_come_oldest_first(store: Arc<dyn Store>) {
    let h = History::create(&*store).await;
    let (ours, theirs) = (&h.ours, &h.theirs);
    let after = |message: &MessageRecord| HistoryCursor::After(message.message_id);

    // Strictly newer than the cursor, oldest first, `limit` at most.
    let first = h.page(&*store, after(&ours[1]), 2).await;
    assert_eq!(first, vec![ours[2].clone(), ours[3].clone()]);
    let second = h.page(&*store, after(&ours[3]), 2).await;
    assert_eq!(second, vec![ours[4].clone()]);
    assert_eq!(h.page(&*store, after(&ours[4]), 2).await, vec![]);

    let everything = h
        .page(&*store, HistoryCursor::After(MessageId(Ulid::nil())), 100)
        .await;
    assert_eq!(&everything, ours);
    // Only a bound: another channel's message in between the ones asked for.
    let after_theirs = h.page(&*store, after(&theirs[0]), 100).await;
    assert_eq!(after_theirs, ours[2..].to_vec());
    let past_the_end = h.page(&*store, after(&theirs[1]), 100).await;
    assert_eq!(past_the_end, vec![]);

    let wrong_guild = store
        .messages(new_id(), h.channel_id, after(&ours[0]), 100)
        .await
        .expect("messages");
    assert_eq!(wrong_guild, vec![]);
}

// --- connect -------------------------------------------------------------------

#[tokio::test]
async fn connect_rejects_an_unknown_scheme_without_echoing_the_url() {
    let error = match super::connect("mysql://admin:secret@db/filament").await {
        Ok(_) => panic!("a mysql url must be rejected"),
        Err(error) => error,
    };
    assert!(
        matches!(&error, StoreError::UnsupportedUrl { scheme } if scheme == "mysql"),
        "got {error:?}"
    );
    assert!(!error.to_string().contains("secret"), "{error}");
}

#[tokio::test]
async fn connect_opens_sqlite_urls() {
    let store = super::connect("sqlite::memory:")
        .await
        .expect("connect sqlite");
    let user_id = create_user(&*store, "alice").await;
    let found = store.user_by_id(user_id).await.expect("user by id");
    assert_eq!(found.map(|user| user.username), Some("alice".to_owned()));
}

// --- SQLite on a file ------------------------------------------------------------

/// The conformance cases use one pinned in-memory connection; this one runs
/// the racy path across real connections to a WAL file, where the loser must
/// wait on the busy timeout rather than fail with "database is locked".
#[tokio::test]
async fn sqlite_file_rotates_once_across_connections_and_reopens() {
    let path = std::env::temp_dir().join(format!("filament-store-{}.db", Ulid::generate()));
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url)
        .await
        .expect("create the database file");
    let user_id = create_user(&store, "alice").await;
    let session_id = create_session(&store, user_id, "h1", NOW + 100).await;
    open_two_connections(&store, user_id).await;

    let (first, second) = tokio::join!(
        rotate(&store, session_id, "h1", "h-a", NOW),
        rotate(&store, session_id, "h1", "h-b", NOW),
    );
    let mut outcomes = [first, second];
    outcomes.sort_by_key(|outcome| matches!(outcome, RotateOutcome::Replayed { .. }));
    assert_eq!(
        outcomes,
        [
            RotateOutcome::Rotated { user_id },
            RotateOutcome::Replayed { user_id }
        ]
    );
    let wal = path.with_extension("db-wal");
    assert!(wal.exists(), "expected WAL journal {}", wal.display());
    store.close().await;

    // Reopening finds the data and the migrations already applied.
    let reopened = SqliteStore::connect(&url)
        .await
        .expect("reopen the database file");
    let found = reopened.user_by_id(user_id).await.expect("user by id");
    assert_eq!(found.map(|user| user.username), Some("alice".to_owned()));
    reopened.close().await;

    for suffix in ["db", "db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(suffix));
    }
}

async fn members_page_by_user_id(store: Arc<dyn Store>) {
    let owner = create_user(store.as_ref(), "pager").await;
    let guild_id = new_id();
    store
        .create_guild(
            GuildRecord {
                guild_id,
                name: "Paged".to_owned(),
                visibility: Visibility::Public,
                created_by: owner,
                created_at_unix: NOW,
            },
            crate::store::BuiltinMasks::FOR_TESTS,
        )
        .await
        .expect("create guild");
    let mut expected = vec![owner];
    for n in 0..3 {
        let user = create_user(store.as_ref(), &format!("pagee{n}")).await;
        store
            .add_member(MemberRecord {
                guild_id,
                user_id: user,
                role: MemberRole::Member,
                joined_at_unix: NOW,
            })
            .await
            .expect("add member");
        expected.push(user);
    }
    expected.sort();
    let first = store.members(guild_id, None, 3).await.expect("page");
    let ids: Vec<_> = first.iter().map(|m| m.user_id).collect();
    assert_eq!(ids, expected[..3]);
    let rest = store
        .members(guild_id, Some(ids[2]), 3)
        .await
        .expect("page");
    let ids: Vec<_> = rest.iter().map(|m| m.user_id).collect();
    assert_eq!(ids, expected[3..]);
    // The owner's id is random, so it may sit on either page.
    assert_eq!(
        first
            .iter()
            .chain(&rest)
            .find(|m| m.user_id == owner)
            .map(|m| m.role),
        Some(MemberRole::Owner)
    );
}
