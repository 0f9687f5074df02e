-- Rendezvous sessions shared by every mxqr instance (PostgreSQL back end of RendezvousStore).
-- Times are the database clock's, so instances with skewed clocks agree on expiry.

CREATE TABLE rendezvous_sessions (
    id          BYTEA PRIMARY KEY,           -- 128 random bits, big-endian
    transport   SMALLINT NOT NULL,           -- 0 = MSC4388, 1 = MSC4108
    data        TEXT NOT NULL,
    token       BIGINT NOT NULL,             -- current sequence token (u64 bits)
    prev_token  BIGINT,                      -- token the latest write replaced: retried-PUT rule
    created_at  TIMESTAMPTZ NOT NULL,
    modified_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

-- Purge and eviction walk this index from its low end: never a full scan.
CREATE INDEX rendezvous_sessions_expires_at ON rendezvous_sessions (expires_at);

-- The last few client transaction IDs per session (`PUT …/{id}/{txnId}`).
CREATE TABLE rendezvous_txns (
    session_id  BYTEA NOT NULL REFERENCES rendezvous_sessions (id) ON DELETE CASCADE,
    txn_id      TEXT NOT NULL,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    fingerprint BYTEA NOT NULL,              -- SHA-256 of the expected token and the data
    outcome     BIGINT,                      -- token answered; NULL: the write conflicted
    PRIMARY KEY (session_id, txn_id)
);

-- Live rows per transport, kept exact by the triggers below, so the session cap needs no count(*).
CREATE TABLE rendezvous_counts (
    singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    live_msc4388  BIGINT NOT NULL DEFAULT 0,
    live_msc4108  BIGINT NOT NULL DEFAULT 0
);
INSERT INTO rendezvous_counts DEFAULT VALUES;

CREATE FUNCTION mxqr_rendezvous_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rendezvous_counts SET
        live_msc4388 = live_msc4388 + (SELECT count(*) FROM new_rows WHERE transport = 0),
        live_msc4108 = live_msc4108 + (SELECT count(*) FROM new_rows WHERE transport = 1);
    RETURN NULL;
END $$;

CREATE FUNCTION mxqr_rendezvous_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rendezvous_counts SET
        live_msc4388 = live_msc4388 - (SELECT count(*) FROM old_rows WHERE transport = 0),
        live_msc4108 = live_msc4108 - (SELECT count(*) FROM old_rows WHERE transport = 1);
    RETURN NULL;
END $$;

CREATE TRIGGER rendezvous_sessions_inserted AFTER INSERT ON rendezvous_sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION mxqr_rendezvous_count_inserted();
CREATE TRIGGER rendezvous_sessions_deleted AFTER DELETE ON rendezvous_sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION mxqr_rendezvous_count_deleted();

-- Creates a session and applies the cap in one round trip: past `max_sessions` live rows, the
-- rows closest to expiry go (the likeliest abandoned), so a user starting a sign-in is never
-- refused. Evicted sessions are announced on `mxqr_rendezvous` so long-polls on them end.
-- No row back means the ID was taken: the caller draws another.
CREATE FUNCTION mxqr_rendezvous_create(
    p_id BYTEA, p_transport SMALLINT, p_data TEXT, p_token BIGINT, p_ttl_ms BIGINT,
    p_max_sessions BIGINT
) RETURNS TABLE (
    expires_in_ms BIGINT, modified_ms BIGINT, live_msc4388 BIGINT, live_msc4108 BIGINT,
    evicted SMALLINT[], expired SMALLINT[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_now   TIMESTAMPTZ := now();
    v_over  BIGINT;
    v_gone  RECORD;
BEGIN
    evicted := '{}';
    expired := '{}';
    INSERT INTO rendezvous_sessions
        (id, transport, data, token, prev_token, created_at, modified_at, expires_at)
    VALUES (p_id, p_transport, p_data, p_token, NULL, v_now, v_now,
            v_now + p_ttl_ms * INTERVAL '1 millisecond')
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT c.live_msc4388 + c.live_msc4108 - p_max_sessions INTO v_over FROM rendezvous_counts c;
    IF v_over > 0 THEN
        FOR v_gone IN
            DELETE FROM rendezvous_sessions WHERE id IN (
                SELECT s.id FROM rendezvous_sessions s WHERE s.id <> p_id
                ORDER BY s.expires_at LIMIT v_over FOR UPDATE SKIP LOCKED)
            RETURNING rendezvous_sessions.id, rendezvous_sessions.transport,
                      rendezvous_sessions.expires_at <= v_now AS is_expired
        LOOP
            PERFORM pg_notify('mxqr_rendezvous', encode(v_gone.id, 'hex'));
            IF v_gone.is_expired THEN
                expired := expired || v_gone.transport;
            ELSE
                evicted := evicted || v_gone.transport;
            END IF;
        END LOOP;
    END IF;
    SELECT c.live_msc4388, c.live_msc4108 INTO live_msc4388, live_msc4108 FROM rendezvous_counts c;
    expires_in_ms := p_ttl_ms;
    modified_ms := (extract(epoch FROM v_now) * 1000)::BIGINT;
    RETURN NEXT;
END $$;
