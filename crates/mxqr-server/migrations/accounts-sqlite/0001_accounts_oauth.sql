-- Accounts, OAuth 2.0 clients, grants and tokens.
-- Portable SQL (SQLite now, PostgreSQL later): TEXT keys chosen by the application (no
-- autoincrement), BIGINT times in milliseconds since the Unix epoch, INTEGER 0/1 flags,
-- secrets stored only as lowercase hex SHA-256 digests.

CREATE TABLE users (
    localpart      TEXT PRIMARY KEY,
    password_hash  TEXT,
    locked         INTEGER NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE devices (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    device_id      TEXT NOT NULL,
    display_name   TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id)
);

CREATE TABLE clients (
    client_id      TEXT PRIMARY KEY,
    metadata_hash  TEXT NOT NULL UNIQUE,
    metadata       TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- One OAuth session: one device signed in through one grant, until revoked.
CREATE TABLE oauth_sessions (
    session_id     TEXT PRIMARY KEY,
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    device_id      TEXT NOT NULL,
    client_id      TEXT,
    scope          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);
CREATE INDEX oauth_sessions_device ON oauth_sessions (localpart, device_id);

CREATE TABLE access_tokens (
    token_hash     TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES oauth_sessions (session_id),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);
CREATE INDEX access_tokens_session ON access_tokens (session_id);

-- used_at: when this token was exchanged; replaced_by: the refresh token that exchange issued.
CREATE TABLE refresh_tokens (
    token_hash        TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES oauth_sessions (session_id),
    access_token_hash TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    used_at           BIGINT,
    replaced_by       TEXT,
    revoked_at        BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE authorization_codes (
    code_hash       TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    localpart       TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    session_id      TEXT
);

-- status: pending, approved, denied, redeemed.
CREATE TABLE device_grants (
    device_code_hash TEXT PRIMARY KEY,
    user_code        TEXT NOT NULL UNIQUE,
    client_id        TEXT NOT NULL,
    scope            TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    requester_ip     TEXT NOT NULL,
    requester_ua     TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    interval_secs    BIGINT NOT NULL,
    last_poll_at     BIGINT,
    status           TEXT NOT NULL,
    localpart        TEXT,
    lookups          INTEGER NOT NULL DEFAULT 0,
    session_id       TEXT
);

CREATE TABLE browser_sessions (
    session_hash   TEXT PRIMARY KEY,
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);

-- Approval for one replacement of the cross-signing keys without user-interactive auth.
CREATE TABLE cross_signing_resets (
    localpart      TEXT PRIMARY KEY REFERENCES users (localpart),
    approved_at    BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);
