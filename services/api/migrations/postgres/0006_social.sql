-- Profiles' images, friend requests and friendships.
--
-- Image bytes live in the database, not on a disk beside the api, so that
-- api replicas stay stateless and a backup holds everything. They are small
-- (2 MiB avatars, 6 MiB banners at most). The SQLite twin of this file is
-- ../sqlite/0006_social.sql; keep them in step.

CREATE TABLE profile_images (
    user_id         TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    kind            TEXT             NOT NULL CHECK (kind IN ('avatar', 'banner')),
    content_type    TEXT             NOT NULL,
    sha256_hex      TEXT             NOT NULL,
    bytes           BYTEA            NOT NULL,
    updated_at_unix BIGINT           NOT NULL,
    PRIMARY KEY (user_id, kind)
);

-- A pending request. `user_low`/`user_high` are the two parties in id
-- order: their uniqueness allows one pending request per pair, whichever
-- way it points, even when both send at the same moment.
CREATE TABLE friend_requests (
    request_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    sender_user_id    TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    recipient_user_id TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    user_low          TEXT COLLATE "C" NOT NULL,
    user_high         TEXT COLLATE "C" NOT NULL,
    created_at_unix   BIGINT           NOT NULL,
    CHECK (sender_user_id <> recipient_user_id),
    CHECK (user_low < user_high),
    CONSTRAINT friend_requests_pair_key UNIQUE (user_low, user_high)
);

-- Incoming and outgoing lists.
CREATE INDEX friend_requests_sender_idx ON friend_requests (sender_user_id);
CREATE INDEX friend_requests_recipient_idx ON friend_requests (recipient_user_id);

-- A friendship is stored once from each side, written and removed together,
-- so that "friends of X" is a primary-key range.
CREATE TABLE friendships (
    user_id         TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    friend_user_id  TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at_unix BIGINT           NOT NULL,
    CHECK (user_id <> friend_user_id),
    PRIMARY KEY (user_id, friend_user_id)
);
