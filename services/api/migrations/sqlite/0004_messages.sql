-- Attachments and reactions (the message edit/delete area). The Postgres
-- twin of this file is ../postgres/0004_messages.sql; keep them in step.

-- An uploaded file. `message_id` is NULL until a message binds it; a bound
-- attachment belongs to that message and is deleted with it (the handler
-- deletes rows and files explicitly; the cascade is a safety net).
CREATE TABLE attachments (
    attachment_id   TEXT    NOT NULL PRIMARY KEY,
    guild_id        TEXT    NOT NULL,
    channel_id      TEXT    NOT NULL REFERENCES channels (channel_id) ON DELETE CASCADE,
    owner_id        TEXT    NOT NULL,
    message_id      TEXT             REFERENCES messages (message_id) ON DELETE CASCADE,
    filename        TEXT    NOT NULL,
    mime_type       TEXT    NOT NULL,
    size_bytes      INTEGER NOT NULL CHECK (size_bytes > 0),
    sha256_hex      TEXT    NOT NULL,
    created_at_unix INTEGER NOT NULL
) STRICT;

-- A message's attachments, for history pages and deletes.
CREATE INDEX attachments_message_id_idx ON attachments (message_id);

-- Bytes each user holds in attachments. Kept next to the rows (every insert
-- and delete of an attachment updates it in the same transaction) so the
-- quota check is one conditional upsert that concurrent uploads cannot both
-- slip past.
CREATE TABLE attachment_usage (
    user_id    TEXT    NOT NULL PRIMARY KEY,
    used_bytes INTEGER NOT NULL CHECK (used_bytes >= 0)
) STRICT;

-- One row per (message, emoji, reactor).
CREATE TABLE message_reactions (
    message_id      TEXT    NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    emoji           TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    created_at_unix INTEGER NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
) STRICT;
