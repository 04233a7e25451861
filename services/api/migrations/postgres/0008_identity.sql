-- Identity edges: usernames unique in any case, and join addresses kept
-- per guild. The SQLite twin of this file is ../sqlite/0008_identity.sql;
-- keep them in step.

-- `victim` and `VICTIM` were two accounts. Usernames are ASCII (contract
-- §2), so lower() folds them exactly, and the same way on both backends.
-- Databases that already hold such twins keep the oldest account's name;
-- every later twin is renamed to its own user id (26 characters of
-- [0-9A-Z]: a valid, unique username) and can rename itself again.
UPDATE users SET username = user_id
WHERE EXISTS (
    SELECT 1 FROM users AS older
    WHERE lower(older.username) = lower(users.username)
      AND (older.created_at_unix < users.created_at_unix
           OR (older.created_at_unix = users.created_at_unix
               AND older.user_id < users.user_id))
);

-- Enforces the rule, and serves lookups and logins by folded name.
CREATE UNIQUE INDEX users_username_folded_key ON users (lower(username));

-- The addresses a user made accepted directory joins from, per guild, for
-- `POST /guilds/{g}/ip-bans/by-user`, which bans only what was seen in its
-- own guild. Bounded per guild and user by the store.
CREATE TABLE guild_join_addresses (
    guild_id           TEXT COLLATE "C" NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    user_id            TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    ip_cidr            TEXT COLLATE "C" NOT NULL,
    first_seen_at_unix BIGINT           NOT NULL,
    last_seen_at_unix  BIGINT           NOT NULL,
    PRIMARY KEY (guild_id, user_id, ip_cidr)
);

-- For the users foreign key's cascade.
CREATE INDEX guild_join_addresses_user_id_idx ON guild_join_addresses (user_id);

-- Its rows say nothing of the guild they were seen in (and include refused
-- joins), so carrying them over would keep the cross-guild bans this table
-- replaces; addresses are a liability, not something to keep "just in case".
DROP TABLE user_ip_observations;
