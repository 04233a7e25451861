-- The message change log: one row per committed create, edit or delete of a
-- message, written in the same transaction as the change. The search
-- service follows it (over gRPC, `MessageFeed.Follow`) from the last `seq`
-- it applied, so a restart catches up exactly. See
-- docs/adr/0002-search-feed.md. The Postgres twin of this file is
-- ../postgres/0007_message_log.sql; keep them in step.
--
-- `seq` is not an autoincrement: every writer takes the next value from
-- the single row of `message_log_head` with an UPDATE, whose row lock is
-- held until commit. So seqs commit in order on both backends, and a
-- follower that has read up to N can never later see a smaller seq appear.
-- The log is never truncated in this version.

CREATE TABLE message_changes (
    seq             INTEGER NOT NULL PRIMARY KEY,
    message_id      TEXT    NOT NULL,
    guild_id        TEXT    NOT NULL,
    channel_id      TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('upsert', 'delete')),
    changed_at_unix INTEGER NOT NULL
) STRICT;

CREATE TABLE message_log_head (
    id  INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0)
) STRICT;

-- Messages written before the log existed enter it once, oldest first, so
-- a follower starting from 0 still sees every message.
INSERT INTO message_changes (seq, message_id, guild_id, channel_id, kind, changed_at_unix)
SELECT ROW_NUMBER() OVER (ORDER BY message_id), message_id, guild_id, channel_id, 'upsert',
       created_at_unix
FROM messages;

INSERT INTO message_log_head (id, seq) SELECT 1, COUNT(*) FROM messages;

-- Rebuilding or reconciling one guild pages over its messages by id.
CREATE INDEX messages_guild_id_message_id_idx ON messages (guild_id, message_id);
