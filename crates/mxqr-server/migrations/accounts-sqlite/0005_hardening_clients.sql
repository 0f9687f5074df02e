-- Unauthenticated growth: clients never used are purged a day after their last registration,
-- and pending device grants are capped per requesting address and per client.

-- registered_at: the last registration of this metadata (a re-registration returns the same
-- client and restarts its day); used_at: the first authorization code or session issued.
ALTER TABLE clients ADD COLUMN registered_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN used_at BIGINT;
UPDATE clients SET registered_at = created_at;
-- Clients from before this migration count as used if anything still refers to them.
UPDATE clients SET used_at = created_at
 WHERE client_id IN (SELECT client_id FROM oauth_sessions WHERE client_id IS NOT NULL)
    OR client_id IN (SELECT client_id FROM authorization_codes)
    OR client_id IN (SELECT client_id FROM device_grants);
CREATE INDEX clients_unused ON clients (registered_at) WHERE used_at IS NULL;

-- requester_key: the requesting address as the rate limits group it (IPv6 by /64).
ALTER TABLE device_grants ADD COLUMN requester_key TEXT NOT NULL DEFAULT '';
UPDATE device_grants SET requester_key = requester_ip;
CREATE INDEX device_grants_pending_requester ON device_grants (requester_key, expires_at)
    WHERE status = 'pending';
CREATE INDEX device_grants_pending_client ON device_grants (client_id, expires_at)
    WHERE status = 'pending';
