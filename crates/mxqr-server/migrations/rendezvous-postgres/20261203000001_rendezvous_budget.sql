-- Total-bytes budget of the rendezvous, and eviction that spares sessions in use: a session
-- written within the protection window is never evicted; at the cap with nothing else to
-- evict, creation (and a write that grows a payload) is refused instead.

-- Payload bytes of live sessions, kept exact by the triggers below.
ALTER TABLE rendezvous_counts ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
UPDATE rendezvous_counts SET bytes =
    (SELECT coalesce(sum(octet_length(data)), 0) FROM rendezvous_sessions);

CREATE OR REPLACE FUNCTION mxqr_rendezvous_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rendezvous_counts SET
        live_msc4388 = live_msc4388 + (SELECT count(*) FROM new_rows WHERE transport = 0),
        live_msc4108 = live_msc4108 + (SELECT count(*) FROM new_rows WHERE transport = 1),
        bytes = bytes + (SELECT coalesce(sum(octet_length(data)), 0) FROM new_rows);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mxqr_rendezvous_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rendezvous_counts SET
        live_msc4388 = live_msc4388 - (SELECT count(*) FROM old_rows WHERE transport = 0),
        live_msc4108 = live_msc4108 - (SELECT count(*) FROM old_rows WHERE transport = 1),
        bytes = bytes - (SELECT coalesce(sum(octet_length(data)), 0) FROM old_rows);
    RETURN NULL;
END $$;

CREATE FUNCTION mxqr_rendezvous_count_rewritten() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rendezvous_counts SET bytes = bytes + octet_length(NEW.data) - octet_length(OLD.data);
    RETURN NULL;
END $$;

CREATE TRIGGER rendezvous_sessions_rewritten AFTER UPDATE OF data ON rendezvous_sessions
    FOR EACH ROW WHEN (octet_length(OLD.data) <> octet_length(NEW.data))
    EXECUTE FUNCTION mxqr_rendezvous_count_rewritten();

-- Makes room for `p_sessions` more sessions and `p_bytes` more payload bytes by evicting the
-- sessions closest to expiry that were not written within `p_protect_ms` (never `p_keep`).
-- Holds the counts row, so concurrent creations queue here rather than overshoot the caps.
-- `room_in_ms` NULL: there is room (evictions done and announced). Otherwise nothing was
-- evicted and `room_in_ms` says when a protected session ages or expires.
CREATE FUNCTION mxqr_rendezvous_make_room(
    p_sessions BIGINT, p_bytes BIGINT, p_max_sessions BIGINT, p_max_bytes BIGINT,
    p_protect_ms BIGINT, p_keep BYTEA
) RETURNS TABLE (room_in_ms BIGINT, evicted SMALLINT[], expired SMALLINT[])
LANGUAGE plpgsql AS $$
DECLARE
    v_now     TIMESTAMPTZ := now();
    v_protect INTERVAL := p_protect_ms * INTERVAL '1 millisecond';
    v_live    BIGINT;
    v_bytes   BIGINT;
    v_room    TIMESTAMPTZ;
    v_ids     BYTEA[] := '{}';
    v_c       RECORD;
BEGIN
    evicted := '{}';
    expired := '{}';
    SELECT c.live_msc4388 + c.live_msc4108, c.bytes INTO v_live, v_bytes
        FROM rendezvous_counts c FOR UPDATE;
    IF v_live + p_sessions <= p_max_sessions AND v_bytes + p_bytes <= p_max_bytes THEN
        RETURN NEXT;
        RETURN;
    END IF;
    FOR v_c IN
        SELECT s.id, s.transport, s.expires_at, s.modified_at, octet_length(s.data) AS len
        FROM rendezvous_sessions s WHERE p_keep IS NULL OR s.id <> p_keep
        ORDER BY s.expires_at LIMIT 256 FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN v_live + p_sessions <= p_max_sessions AND v_bytes + p_bytes <= p_max_bytes;
        IF v_c.expires_at <= v_now OR v_c.modified_at + v_protect <= v_now THEN
            v_ids := v_ids || v_c.id;
            v_live := v_live - 1;
            v_bytes := v_bytes - v_c.len;
            IF v_c.expires_at <= v_now THEN
                expired := expired || v_c.transport;
            ELSE
                evicted := evicted || v_c.transport;
            END IF;
        ELSE
            v_room := LEAST(v_room, v_c.expires_at, v_c.modified_at + v_protect);
        END IF;
    END LOOP;
    IF v_live + p_sessions > p_max_sessions OR v_bytes + p_bytes > p_max_bytes THEN
        evicted := '{}';
        expired := '{}';
        room_in_ms := GREATEST(0, coalesce((extract(epoch FROM v_room - v_now) * 1000)::BIGINT, 0));
        RETURN NEXT;
        RETURN;
    END IF;
    IF cardinality(v_ids) > 0 THEN
        DELETE FROM rendezvous_sessions WHERE id = ANY (v_ids);
        PERFORM pg_notify('mxqr_rendezvous', encode(gone, 'hex')) FROM unnest(v_ids) AS gone;
    END IF;
    RETURN NEXT;
END $$;

-- Creation under both caps in one round trip. No row back: the ID was taken, draw another.
CREATE FUNCTION mxqr_rendezvous_create_bounded(
    p_id BYTEA, p_transport SMALLINT, p_data TEXT, p_token BIGINT, p_ttl_ms BIGINT,
    p_max_sessions BIGINT, p_max_bytes BIGINT, p_protect_ms BIGINT
) RETURNS TABLE (
    expires_in_ms BIGINT, modified_ms BIGINT, live_msc4388 BIGINT, live_msc4108 BIGINT,
    evicted SMALLINT[], expired SMALLINT[], room_in_ms BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    v_now TIMESTAMPTZ := now();
BEGIN
    SELECT r.room_in_ms, r.evicted, r.expired INTO room_in_ms, evicted, expired
        FROM mxqr_rendezvous_make_room(1, octet_length(p_data), p_max_sessions, p_max_bytes,
                                       p_protect_ms, NULL) r;
    IF room_in_ms IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO rendezvous_sessions
        (id, transport, data, token, prev_token, created_at, modified_at, expires_at)
    VALUES (p_id, p_transport, p_data, p_token, NULL, v_now, v_now,
            v_now + p_ttl_ms * INTERVAL '1 millisecond')
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT c.live_msc4388, c.live_msc4108 INTO live_msc4388, live_msc4108 FROM rendezvous_counts c;
    expires_in_ms := p_ttl_ms;
    modified_ms := (extract(epoch FROM v_now) * 1000)::BIGINT;
    RETURN NEXT;
END $$;
