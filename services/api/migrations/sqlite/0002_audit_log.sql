-- The audit log. Read newest first per guild, optionally by action prefix.

CREATE TABLE audit_log (
    audit_id        TEXT NOT NULL PRIMARY KEY,
    guild_id        TEXT NOT NULL,
    actor_user_id   TEXT NOT NULL,
    target_user_id  TEXT,
    action          TEXT NOT NULL,
    created_at_unix INTEGER NOT NULL
) STRICT;

CREATE INDEX audit_log_guild_created_idx ON audit_log (guild_id, created_at_unix, audit_id);
