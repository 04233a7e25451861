-- The message change log: one row per committed create, edit or delete of a
-- message, written in the same transaction as the change. The search
-- service follows it (over gRPC, `MessageFeed.Follow`) from the last `seq`
-- it applied, so a restart catches up exactly. See
-- docs/adr/0002-search-feed.md. The SQLite twin of this file is
-- ../sqlite/0007_message_log.sql; keep them in step.
--
-- `seq` is not a BIGSERIAL: sequence values are handed out at insert but
-- become visible at commit, so a follower could read seq 11 before a
-- slower transaction commits seq 10 and skip it forever. Every writer
-- instead takes the next value from the single row of `message_log_head`
-- with an UPDATE, whose row lock is held until commit, so seqs commit in
-- order. The log is never truncated in this version.

CREATE TABLE message_changes (
    seq             BIGINT           NOT NULL PRIMARY KEY,
    message_id      TEXT COLLATE "C" NOT NULL,
    guild_id        TEXT COLLATE "C" NOT NULL,
    channel_id      TEXT COLLATE "C" NOT NULL,
    kind            TEXT             NOT NULL CHECK (kind IN ('upsert', 'delete')),
    changed_at_unix BIGINT           NOT NULL
);

CREATE TABLE message_log_head (
    id  INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq BIGINT  NOT NULL CHECK (seq >= 0)
);

-- Messages written before the log existed enter it once, oldest first, so
-- a follower starting from 0 still sees every message.
INSERT INTO message_changes (seq, message_id, guild_id, channel_id, kind, changed_at_unix)
SELECT ROW_NUMBER() OVER (ORDER BY message_id), message_id, guild_id, channel_id, 'upsert',
       created_at_unix
FROM messages;

INSERT INTO message_log_head (id, seq) SELECT 1, COUNT(*) FROM messages;

-- Rebuilding or reconciling one guild pages over its messages by id.
CREATE INDEX messages_guild_id_message_id_idx ON messages (guild_id, message_id);
