-- Guild bans, the addresses users joined from, and guild IP bans (contract
-- §3.4). The Postgres twin of this file is ../postgres/0005_moderation.sql;
-- keep them in step.
--
-- Addresses are stored as canonical host networks (`203.0.113.7/32`,
-- `2001:db8::5/128`, IPv4-mapped IPv6 folded to IPv4), so "is this caller
-- banned here" is one indexed equality lookup on every IP-checked request.
-- The only way to create an IP ban is by user, from addresses observed on
-- directory joins, so every ban is such a host network; a route that bans
-- ranges would need a range-aware lookup.

-- A banned user is not a member (the ban removes the membership in the same
-- transaction) and cannot become one again while this row exists.
CREATE TABLE guild_bans (
    guild_id          TEXT    NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    user_id           TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    banned_by_user_id TEXT    NOT NULL,
    created_at_unix   INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
) STRICT;

-- The addresses a user made directory joins from, newest kept, for
-- `POST /guilds/{g}/ip-bans/by-user`. Bounded per user by the store.
CREATE TABLE user_ip_observations (
    user_id            TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    ip_cidr            TEXT    NOT NULL,
    first_seen_at_unix INTEGER NOT NULL,
    last_seen_at_unix  INTEGER NOT NULL,
    PRIMARY KEY (user_id, ip_cidr)
) STRICT;

-- An IP ban. Never shown with its address: responses and events carry only
-- ids, the source user, the reason and the times.
CREATE TABLE guild_ip_bans (
    ban_id             TEXT    NOT NULL PRIMARY KEY,
    guild_id           TEXT    NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    ip_cidr            TEXT    NOT NULL,
    source_user_id     TEXT,
    reason             TEXT,
    created_by_user_id TEXT    NOT NULL,
    created_at_unix    INTEGER NOT NULL,
    expires_at_unix    INTEGER
) STRICT;

-- The per-request check: does an active ban of this guild cover this address.
CREATE INDEX guild_ip_bans_guild_ip_idx ON guild_ip_bans (guild_id, ip_cidr);
-- The list, newest first.
CREATE INDEX guild_ip_bans_guild_created_idx ON guild_ip_bans (guild_id, created_at_unix, ban_id);
