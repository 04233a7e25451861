-- Users, sessions, guilds, members, channels and messages.
--
-- Ids are ULIDs as 26-char uppercase TEXT. They are COLLATE "C" so that they
-- compare byte by byte, which orders them by time (message pagination relies
-- on it) whatever the database's default collation is. Times are unix
-- seconds. The SQLite twin of this file is ../sqlite/0001_init.sql; keep them
-- in step.

CREATE TABLE users (
    user_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    username        TEXT             NOT NULL,
    password_hash   TEXT             NOT NULL,
    about_markdown  TEXT             NOT NULL DEFAULT '',
    avatar_version  BIGINT           NOT NULL DEFAULT 0,
    banner_version  BIGINT           NOT NULL DEFAULT 0,
    created_at_unix BIGINT           NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE sessions (
    session_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    user_id            TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    refresh_token_hash TEXT             NOT NULL,
    expires_at_unix    BIGINT           NOT NULL,
    revoked            BOOLEAN          NOT NULL DEFAULT FALSE
);

-- For the foreign key's cascade, and for revoking every session of a user.
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE TABLE guilds (
    guild_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name            TEXT             NOT NULL,
    visibility      TEXT             NOT NULL CHECK (visibility IN ('private', 'public')),
    created_by      TEXT COLLATE "C" NOT NULL,
    created_at_unix BIGINT           NOT NULL
);

-- The per-user cap on created guilds counts by creator.
CREATE INDEX guilds_created_by_idx ON guilds (created_by);

CREATE TABLE guild_members (
    guild_id       TEXT COLLATE "C" NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    user_id        TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role           TEXT             NOT NULL CHECK (role IN ('member', 'moderator', 'owner')),
    joined_at_unix BIGINT           NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- "Guilds of a user": the primary key only serves "members of a guild".
CREATE INDEX guild_members_user_id_idx ON guild_members (user_id);

CREATE TABLE channels (
    channel_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    guild_id        TEXT COLLATE "C" NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    name            TEXT             NOT NULL,
    kind            TEXT             NOT NULL CHECK (kind IN ('text', 'voice')),
    created_at_unix BIGINT           NOT NULL
);

-- Channel lists come in creation order.
CREATE INDEX channels_guild_id_created_idx ON channels (guild_id, created_at_unix, channel_id);

CREATE TABLE messages (
    message_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    guild_id        TEXT COLLATE "C" NOT NULL,
    channel_id      TEXT COLLATE "C" NOT NULL REFERENCES channels (channel_id) ON DELETE CASCADE,
    author_id       TEXT COLLATE "C" NOT NULL,
    content         TEXT             NOT NULL,
    created_at_unix BIGINT           NOT NULL
);

-- History pages walk one channel backwards by message id.
CREATE INDEX messages_channel_id_message_id_idx ON messages (channel_id, message_id);
