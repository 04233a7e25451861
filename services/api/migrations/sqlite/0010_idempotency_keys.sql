-- Idempotency keys: a REST write sent with `Idempotency-Key` records the
-- key and its response in the write's own transaction, so a retry of a
-- write that committed (its answer lost to a timeout or a dropped
-- connection) gets the original response instead of making a duplicate.
-- See docs/adr/0006-outbox.md. The Postgres twin of this file is
-- ../postgres/0010_idempotency_keys.sql; keep them in step.
--
-- Keys are per user and live 24 hours (the api ignores older rows and
-- deletes them). `fingerprint` is a hash of what the request asked for, so
-- the same key with another body is refused rather than replayed.

CREATE TABLE idempotency_keys (
    user_id         TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    status          INTEGER NOT NULL,
    response        TEXT    NOT NULL,
    created_at_unix INTEGER NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
) STRICT;

-- Expired keys are deleted by age.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at_unix);
