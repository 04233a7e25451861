-- The event outbox: the realtime event of a write, stored in the same
-- transaction as the write, so a crash or a dropped request between the
-- commit and the publish can no longer lose it. The api's relay publishes
-- what the request path did not (`src/outbox.rs`). See
-- docs/adr/0006-outbox.md. The Postgres twin of this file is
-- ../postgres/0009_event_outbox.sql; keep them in step.
--
-- A row lives from its write's commit until it was published: the request
-- path deletes it right after publishing, a relay after publishing what was
-- left. `claimed_until_unix_ms` is a lease: nobody but its holder publishes
-- the row before then. The request path holds it from the insert; a relay
-- takes rows whose lease ran out (their writer died or timed out) by moving
-- it forward with a conditional UPDATE, which only one claimer can win.

CREATE TABLE event_outbox (
    -- A ULID minted by the writer: the event's id, and the publishing order.
    event_id              TEXT    NOT NULL PRIMARY KEY,
    -- The `filament.v1.Event`, protobuf-encoded, exactly as it is published.
    payload               BLOB    NOT NULL,
    created_at_unix       INTEGER NOT NULL,
    claimed_until_unix_ms INTEGER NOT NULL
) STRICT;

-- The relay's claim: rows whose lease ran out, oldest first.
CREATE INDEX event_outbox_claimable_idx ON event_outbox (claimed_until_unix_ms, event_id);
