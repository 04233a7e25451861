-- Roles, role assignments, the default join role and channel permission
-- overrides (contract §3.5, §4). The SQLite twin of this file is
-- ../sqlite/0003_roles.sql; keep them in step.
--
-- `builtin` names the four roles seeded in every guild; `is_system` is not
-- stored but derived from it (@everyone and workspace_owner are system
-- roles), so the two can never disagree. Permission masks are the contract's
-- u64 bit sets, stored as BIGINT (only the low 12 bits are ever set).

CREATE TABLE roles (
    role_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    guild_id        TEXT COLLATE "C" NOT NULL REFERENCES guilds (guild_id) ON DELETE CASCADE,
    name            TEXT             NOT NULL,
    position        BIGINT           NOT NULL CHECK (position >= 0),
    builtin         TEXT             CHECK (builtin IN ('everyone', 'workspace_owner', 'moderator', 'member')),
    permissions     BIGINT           NOT NULL,
    color_hex       TEXT,
    created_at_unix BIGINT           NOT NULL,
    -- Each built-in role exists at most once per guild (NULLs are distinct).
    CONSTRAINT roles_guild_builtin_key UNIQUE (guild_id, builtin)
);

-- Role lists come by position, highest first.
CREATE INDEX roles_guild_position_idx ON roles (guild_id, position);

-- Explicit assignments. A membership's built-in role (owner → workspace_owner,
-- moderator → moderator, member → member) is implied by guild_members.role
-- and not necessarily stored here. Removing the membership (kick, ban) drops
-- its assignments with it.
CREATE TABLE role_assignments (
    guild_id         TEXT COLLATE "C" NOT NULL,
    user_id          TEXT COLLATE "C" NOT NULL,
    role_id          TEXT COLLATE "C" NOT NULL REFERENCES roles (role_id) ON DELETE CASCADE,
    assigned_at_unix BIGINT           NOT NULL,
    PRIMARY KEY (guild_id, user_id, role_id),
    FOREIGN KEY (guild_id, user_id) REFERENCES guild_members (guild_id, user_id) ON DELETE CASCADE
);

-- For the cascade from roles, and "who holds this role".
CREATE INDEX role_assignments_role_id_idx ON role_assignments (role_id);

-- The role a directory join assigns; cleared when that role is deleted.
ALTER TABLE guilds ADD COLUMN default_join_role_id TEXT COLLATE "C" REFERENCES roles (role_id) ON DELETE SET NULL;

-- One table for every channel override: the legacy `/overrides/{role}` route
-- writes the row of the built-in role, so there is one truth. Role targets
-- are removed with their role (in the same transaction, there is no foreign
-- key to a polymorphic target); member targets outlive a membership.
CREATE TABLE channel_overrides (
    channel_id  TEXT COLLATE "C" NOT NULL REFERENCES channels (channel_id) ON DELETE CASCADE,
    guild_id    TEXT COLLATE "C" NOT NULL,
    target_kind TEXT             NOT NULL CHECK (target_kind IN ('role', 'member')),
    target_id   TEXT COLLATE "C" NOT NULL,
    allow_bits  BIGINT           NOT NULL,
    deny_bits   BIGINT           NOT NULL,
    PRIMARY KEY (channel_id, target_kind, target_id)
);

-- Channel lists read a guild's overrides at once; role deletes find theirs.
CREATE INDEX channel_overrides_guild_target_idx ON channel_overrides (guild_id, target_kind, target_id);
