-- Jobs for Synapse's /_synapse/mas/* provisioning API (delegated mode), drained in id order by
-- the server's background task; a job is deleted once Synapse accepted it. Kept in the store
-- so that nothing is lost while Synapse is down or mxqr restarts.
CREATE TABLE synapse_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    localpart       TEXT NOT NULL,
    device_id       TEXT,
    display_name    TEXT,
    created_at      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT
);
