-- Attachments and reactions (the message edit/delete area). The SQLite twin
-- of this file is ../sqlite/0004_messages.sql; keep them in step. `emoji` is
-- COLLATE "C" too, so reactions sort by emoji byte by byte on both backends.

-- An uploaded file. `message_id` is NULL until a message binds it; a bound
-- attachment belongs to that message and is deleted with it (the handler
-- deletes rows and files explicitly; the cascade is a safety net).
CREATE TABLE attachments (
    attachment_id   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    guild_id        TEXT COLLATE "C" NOT NULL,
    channel_id      TEXT COLLATE "C" NOT NULL REFERENCES channels (channel_id) ON DELETE CASCADE,
    owner_id        TEXT COLLATE "C" NOT NULL,
    message_id      TEXT COLLATE "C"          REFERENCES messages (message_id) ON DELETE CASCADE,
    filename        TEXT             NOT NULL,
    mime_type       TEXT             NOT NULL,
    size_bytes      BIGINT           NOT NULL CHECK (size_bytes > 0),
    sha256_hex      TEXT             NOT NULL,
    created_at_unix BIGINT           NOT NULL
);

-- A message's attachments, for history pages and deletes.
CREATE INDEX attachments_message_id_idx ON attachments (message_id);

-- Bytes each user holds in attachments. Kept next to the rows (every insert
-- and delete of an attachment updates it in the same transaction) so the
-- quota check is one conditional upsert that concurrent uploads cannot both
-- slip past.
CREATE TABLE attachment_usage (
    user_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    used_bytes BIGINT           NOT NULL CHECK (used_bytes >= 0)
);

-- One row per (message, emoji, reactor).
CREATE TABLE message_reactions (
    message_id      TEXT COLLATE "C" NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    emoji           TEXT COLLATE "C" NOT NULL,
    user_id         TEXT COLLATE "C" NOT NULL,
    created_at_unix BIGINT           NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);
