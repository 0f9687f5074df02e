-- End-to-end encryption keys, key-backup versions and account data of the client-server API.
-- Portable SQL as in 0001: application-chosen TEXT keys, BIGINT millisecond times, key objects
-- stored as the JSON text the client uploaded (signatures merged in as they verify).
-- Key rows older than their device row belong to an earlier device with the same ID (deleted
-- through any path, e.g. the account page): they are ignored, and purged on the next write.

-- A device's identity keys (`device_keys` of /keys/upload), one object per device.
CREATE TABLE e2e_device_keys (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    device_id      TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id)
);

-- Signed one-time keys, each claimed (deleted) at most once.
CREATE TABLE e2e_one_time_keys (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    device_id      TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id, algorithm, key_id)
);

-- The current fallback key per algorithm; handed out when one-time keys run out.
CREATE TABLE e2e_fallback_keys (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    device_id      TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    used           INTEGER NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id, algorithm)
);

-- key_usage: master, self_signing, user_signing.
CREATE TABLE e2e_cross_signing_keys (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    key_usage      TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, key_usage)
);

-- A user's user-signing-key signature of another user's master key: shown only to the signer.
CREATE TABLE e2e_user_signatures (
    signer         TEXT NOT NULL REFERENCES users (localpart),
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (signer, target_user_id, target_key_id, signer_key_id)
);

-- Server-side key backup versions; version numbers count up per user, never reused.
CREATE TABLE e2e_backup_versions (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    version        BIGINT NOT NULL,
    algorithm      TEXT NOT NULL,
    auth_data      TEXT NOT NULL,
    etag           BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    deleted_at     BIGINT,
    PRIMARY KEY (localpart, version)
);

CREATE TABLE account_data (
    localpart      TEXT NOT NULL REFERENCES users (localpart),
    data_type      TEXT NOT NULL,
    content        TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (localpart, data_type)
);
