-- used_at: first time the access token authenticated a request (client-server API or
-- Synapse's introspection). A refresh retry is allowed only while the successor pair has
-- never been used (RFC 9700 §4.14).
ALTER TABLE access_tokens ADD COLUMN used_at BIGINT;

-- Facts fixed at first start: `server_name` (Matrix IDs and signed keys depend on it).
CREATE TABLE server_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
