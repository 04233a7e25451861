//! The facts one permission decision weighs (PROTOCOL.md §3.4), read in one
//! statement: the membership, the guild's roles, the member's explicit
//! assignments and, for a channel, the channel and the overrides that can
//! apply to the member. Every request that touches a channel asks it
//! (posting a message among them), so it is one round trip instead of
//! five, on both backends; and one statement reads one snapshot, which
//! five separate reads did not.
//!
//! Nothing is cached: each question reads the store again, so a kick, a
//! ban or a changed role or override applies to the very next request.
//! The arithmetic stays in the domain (`domain::permissions`); this only
//! gathers its inputs.
//!
//! The five reads are one `UNION ALL` whose rows say which fact they
//! carry (`fact`) and fill the columns of that fact's own decoder,
//! leaving the others NULL. The NULLs are typed, so that Postgres resolves
//! every column's type from the first branch on; SQLite ignores the casts.

use std::sync::LazyLock;

use filament_ids::{ChannelId, GuildId, RoleId, UserId};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::roles::{decode_override, decode_role};
use super::sql::{SqlStore, decode_channel, decode_id, decode_member};
use super::{ChannelRecord, MemberRecord, OverrideRecord, RoleRecord, StoreResult};

/// What the permission model weighs for one user in one guild, and in one
/// channel when one was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFacts {
    /// The membership; `None` for a non-member (or an unknown guild).
    pub member: Option<MemberRecord>,
    /// The guild's roles by position descending, then creation, then id.
    pub roles: Vec<RoleRecord>,
    /// The user's explicit assignments (not the role implied by the legacy
    /// membership role), by role id.
    pub assigned_role_ids: Vec<RoleId>,
    /// The channel, if one was asked for and it is in the guild.
    pub channel: Option<ChannelRecord>,
    /// The channel's role overrides and the user's own member override;
    /// empty when no channel was asked for.
    pub overrides: Vec<OverrideRecord>,
}

/// Every column of the union, with the type its NULL takes in a branch
/// that does not fill it.
const COLUMNS: &[(&str, &str)] = &[
    ("guild_id", "TEXT"),
    ("user_id", "TEXT"),
    ("role", "TEXT"),
    ("joined_at_unix", "BIGINT"),
    ("role_id", "TEXT"),
    ("name", "TEXT"),
    ("position", "BIGINT"),
    ("builtin", "TEXT"),
    ("permissions", "BIGINT"),
    ("color_hex", "TEXT"),
    ("created_at_unix", "BIGINT"),
    ("channel_id", "TEXT"),
    ("kind", "TEXT"),
    ("target_kind", "TEXT"),
    ("target_id", "TEXT"),
    ("allow_bits", "BIGINT"),
    ("deny_bits", "BIGINT"),
];

/// One branch: which fact, the columns its table fills, and the rest of
/// the SELECT. `$1` is the guild, `$2` the user, `$3` the channel (NULL
/// when none was asked for, which matches no row).
const BRANCHES: &[(&str, &[&str], &str)] = &[
    (
        "member",
        &["guild_id", "user_id", "role", "joined_at_unix"],
        "FROM guild_members WHERE guild_id = $1 AND user_id = $2",
    ),
    (
        "role",
        &[
            "role_id",
            "guild_id",
            "name",
            "position",
            "builtin",
            "permissions",
            "color_hex",
            "created_at_unix",
        ],
        "FROM roles WHERE guild_id = $1",
    ),
    (
        "assigned",
        &["role_id"],
        "FROM role_assignments WHERE guild_id = $1 AND user_id = $2",
    ),
    (
        "channel",
        &["channel_id", "guild_id", "name", "kind", "created_at_unix"],
        "FROM channels WHERE channel_id = $3 AND guild_id = $1",
    ),
    (
        // Role overrides are few (64 roles at most per channel); member
        // overrides are read only for this user.
        "override",
        &[
            "guild_id",
            "channel_id",
            "target_kind",
            "target_id",
            "allow_bits",
            "deny_bits",
        ],
        "FROM channel_overrides WHERE guild_id = $1 AND channel_id = $3 \
         AND (target_kind = 'role' OR (target_kind = 'member' AND target_id = $2))",
    ),
];

/// The statement, built once from [`BRANCHES`].
fn access_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        BRANCHES
            .iter()
            .map(|(fact, filled, rest)| {
                let columns: Vec<String> = COLUMNS
                    .iter()
                    .map(|(column, null_type)| {
                        if filled.contains(column) {
                            format!("{column} AS {column}")
                        } else {
                            format!("CAST(NULL AS {null_type}) AS {column}")
                        }
                    })
                    .collect();
                format!(
                    "SELECT CAST('{fact}' AS TEXT) AS fact, {} {rest}",
                    columns.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    });
    SQL.as_str()
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    /// The body of [`RoleStore::access_facts`](super::RoleStore::access_facts).
    pub(super) async fn read_access_facts(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> StoreResult<AccessFacts> {
        let rows = sqlx::query(access_sql())
            .bind(guild_id.to_string())
            .bind(user_id.to_string())
            .bind(channel_id.map(|id| id.to_string()))
            .fetch_all(&self.pool)
            .await?;
        let mut facts = AccessFacts::default();
        for row in &rows {
            let fact: String = row.try_get("fact")?;
            match fact.as_str() {
                "member" => facts.member = Some(decode_member(row)?),
                "role" => facts.roles.push(decode_role(row)?),
                "assigned" => facts.assigned_role_ids.push(decode_id(row, "role_id")?),
                "channel" => facts.channel = Some(decode_channel(row)?),
                "override" => facts.overrides.push(decode_override(row)?),
                other => {
                    return Err(sqlx::Error::ColumnDecode {
                        index: "fact".to_owned(),
                        source: format!("unexpected value {other:?}").into(),
                    }
                    .into());
                }
            }
        }
        // A union promises no order; callers get the separate reads' order.
        facts.roles.sort_by(|a, b| {
            b.position
                .cmp(&a.position)
                .then(a.created_at_unix.cmp(&b.created_at_unix))
                .then(a.role_id.cmp(&b.role_id))
        });
        facts.assigned_role_ids.sort_unstable();
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::{self, TextChannel, conformance, new_id, new_user};
    use crate::store::{
        MemberRole, OverrideTarget, RoleChanges, RoleRecord, Store, WORKSPACE_OWNER_POSITION,
    };

    conformance!(
        one_read_answers_what_the_separate_reads_answer,
        a_non_member_and_a_foreign_channel_read_nothing_of_theirs,
        every_change_shows_in_the_next_read,
    );

    const NOW: i64 = 1_700_000_000;

    /// What the five separate reads say, for comparison.
    async fn separately(
        store: &dyn Store,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> AccessFacts {
        let mut overrides = match channel_id {
            Some(_) => store
                .overrides_for(guild_id, channel_id, user_id)
                .await
                .unwrap(),
            None => Vec::new(),
        };
        overrides.sort_by_key(target_key);
        let channel = match channel_id {
            Some(channel_id) => store.channel(guild_id, channel_id).await.unwrap(),
            None => None,
        };
        AccessFacts {
            member: store.member(guild_id, user_id).await.unwrap(),
            roles: store.roles(guild_id).await.unwrap(),
            assigned_role_ids: store.assigned_role_ids(guild_id, user_id).await.unwrap(),
            channel,
            overrides,
        }
    }

    /// Overrides in a fixed order, for comparison.
    fn target_key(entry: &OverrideRecord) -> (bool, String) {
        match entry.target {
            OverrideTarget::Role(id) => (false, id.to_string()),
            OverrideTarget::Member(id) => (true, id.to_string()),
        }
    }

    async fn at_once(
        store: &dyn Store,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> AccessFacts {
        let mut facts = store
            .access_facts(guild_id, user_id, channel_id)
            .await
            .unwrap();
        facts.overrides.sort_by_key(target_key);
        facts
    }

    async fn member(store: &dyn Store, guild_id: GuildId) -> UserId {
        let user_id = new_user(store).await;
        store
            .add_member(MemberRecord {
                guild_id,
                user_id,
                role: MemberRole::Member,
                joined_at_unix: NOW,
            })
            .await
            .unwrap();
        user_id
    }

    async fn set_override(
        store: &dyn Store,
        place: &TextChannel,
        target: OverrideTarget,
        allow: u64,
        deny: u64,
    ) {
        store
            .upsert_override(
                OverrideRecord {
                    guild_id: place.guild_id,
                    channel_id: place.channel_id,
                    target,
                    allow,
                    deny,
                },
                Vec::new(),
            )
            .await
            .unwrap();
    }

    /// A custom role with a colour and a bit no build knows yet, to see
    /// every column and whole masks pass through the union.
    fn custom_role(guild_id: GuildId, name: &str, position: i64) -> RoleRecord {
        RoleRecord {
            color_hex: Some("#ABCDEF".to_owned()),
            ..tests::custom_role(guild_id, name, position, (1 << 63) | 1)
        }
    }

    async fn one_read_answers_what_the_separate_reads_answer(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let guild_id = place.guild_id;
        let member = member(&*store, guild_id).await;
        let (low, high) = (
            custom_role(guild_id, "low", 5),
            custom_role(guild_id, "high", 50),
        );
        for role in [&low, &high] {
            store
                .create_role(role.clone(), 64, Vec::new())
                .await
                .unwrap();
        }
        store
            .assign_role(guild_id, member, high.role_id, NOW, 16, Vec::new())
            .await
            .unwrap();
        store
            .assign_role(guild_id, member, low.role_id, NOW, 16, Vec::new())
            .await
            .unwrap();
        let other = TextChannel::create(&*store).await;
        set_override(&*store, &place, OverrideTarget::Role(low.role_id), 1, 2).await;
        set_override(&*store, &place, OverrideTarget::Role(high.role_id), 0, 1).await;
        set_override(&*store, &place, OverrideTarget::Member(member), 4, 0).await;
        // Someone else's override, and an override elsewhere, are not read.
        set_override(&*store, &place, OverrideTarget::Member(place.author), 8, 0).await;
        set_override(&*store, &other, OverrideTarget::Member(member), 16, 0).await;

        for (user_id, channel_id) in [
            (member, Some(place.channel_id)),
            (member, None),
            (place.author, Some(place.channel_id)),
            (place.author, None),
        ] {
            let facts = at_once(&*store, guild_id, user_id, channel_id).await;
            assert_eq!(
                facts,
                separately(&*store, guild_id, user_id, channel_id).await
            );
            assert!(facts.member.is_some());
        }
        let facts = at_once(&*store, guild_id, member, Some(place.channel_id)).await;
        assert_eq!(facts.overrides.len(), 3);
        assert_eq!(facts.assigned_role_ids.len(), 2);
        assert_eq!(facts.roles.len(), 6);
        assert_eq!(facts.roles[0].position, WORKSPACE_OWNER_POSITION);
        assert_eq!(facts.channel.map(|c| c.channel_id), Some(place.channel_id));
    }

    async fn a_non_member_and_a_foreign_channel_read_nothing_of_theirs(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let elsewhere = TextChannel::create(&*store).await;
        let stranger = new_user(&*store).await;
        let facts = at_once(&*store, place.guild_id, stranger, Some(place.channel_id)).await;
        assert_eq!(facts.member, None);
        assert!(facts.assigned_role_ids.is_empty());
        // A channel of another guild is not this guild's.
        let facts = at_once(
            &*store,
            place.guild_id,
            place.author,
            Some(elsewhere.channel_id),
        )
        .await;
        assert!(facts.member.is_some());
        assert_eq!(facts.channel, None);
        let unknown = at_once(&*store, new_id(), place.author, Some(place.channel_id)).await;
        assert_eq!(unknown, AccessFacts::default());
    }

    async fn every_change_shows_in_the_next_read(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let guild_id = place.guild_id;
        let member = member(&*store, guild_id).await;
        let read = || at_once(&*store, guild_id, member, Some(place.channel_id));
        let everyone = read().await.roles.into_iter().last().unwrap();
        store
            .update_role(
                guild_id,
                everyone.role_id,
                RoleChanges {
                    permissions: Some(0),
                    ..RoleChanges::default()
                },
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(read().await.roles.last().unwrap().permissions, 0);
        set_override(&*store, &place, OverrideTarget::Member(member), 0, 1).await;
        assert_eq!(read().await.overrides.len(), 1);
        let removed = store
            .remove_member(guild_id, member, Vec::new())
            .await
            .unwrap();
        assert!(removed);
        let facts = read().await;
        assert_eq!(facts.member, None);
    }
}
