//! The Synapse provisioning outbox (delegated mode): jobs for Synapse's `/_synapse/mas/*` API,
//! stored before they are sent so that a Synapse outage or an mxqr restart loses nothing.
//!
//! Jobs are drained strictly in insertion order (a device's upsert must reach Synapse before
//! its deletion), so a job that keeps failing holds the ones behind it until it succeeds or
//! is dropped as permanently refused.

use super::error::{DbError, DbResult};
use super::sql::{SqlDb, exec, fetch, scalar, with_conn, with_tx};

/// What a job asks Synapse to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxKind {
    /// `provision_user`: create the user if missing.
    ProvisionUser,
    /// `upsert_device`: the device's first token was issued.
    UpsertDevice,
    /// `delete_device`: the device's session ended.
    DeleteDevice,
    /// `sync_devices`: make Synapse's device list the user's live sessions (computed when
    /// sent), for session ends whose device is not known at the time.
    SyncDevices,
    /// `allow_cross_signing_reset`: approved on the account page.
    AllowCrossSigningReset,
    /// `set_displayname` (or `unset_displayname` without a name): set by `mxqr admin`. mxqr
    /// keeps no profile: the job carries the name, and Synapse holds it from then on.
    SetDisplayName,
}

impl OutboxKind {
    /// Stored name, also the endpoint under `/_synapse/mas/` (except that a
    /// [`Self::SetDisplayName`] without a name goes to `unset_displayname`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProvisionUser => "provision_user",
            Self::UpsertDevice => "upsert_device",
            Self::DeleteDevice => "delete_device",
            Self::SyncDevices => "sync_devices",
            Self::AllowCrossSigningReset => "allow_cross_signing_reset",
            Self::SetDisplayName => "set_displayname",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::ProvisionUser,
            Self::UpsertDevice,
            Self::DeleteDevice,
            Self::SyncDevices,
            Self::AllowCrossSigningReset,
            Self::SetDisplayName,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A job to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxJob {
    /// Operation.
    pub kind: OutboxKind,
    /// User it concerns.
    pub localpart: String,
    /// Device, for the device operations.
    pub device_id: Option<String>,
    /// Device display name for `upsert_device`; the user's for `set_displayname` (`None`:
    /// unset it).
    pub display_name: Option<String>,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the queue.
    pub id: i64,
    /// The job.
    pub job: OutboxJob,
    /// Failed deliveries so far.
    pub attempts: i64,
    /// Not to be sent before this time, ms.
    pub next_attempt_at: i64,
}

/// A stored job's columns (`attempts` is a 32-bit INTEGER on PostgreSQL).
type OutboxRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    i32,
    i64,
);

fn entry(
    (id, kind, localpart, device_id, display_name, attempts, next_attempt_at): OutboxRow,
) -> DbResult<OutboxEntry> {
    let kind = OutboxKind::parse(&kind)
        .ok_or_else(|| DbError::Unreadable(format!("unknown outbox job kind {kind:?}")))?;
    Ok(OutboxEntry {
        id,
        job: OutboxJob {
            kind,
            localpart,
            device_id,
            display_name,
        },
        attempts: i64::from(attempts),
        next_attempt_at,
    })
}

impl SqlDb {
    /// Appends jobs (in order) and returns the ID of the last one.
    pub async fn outbox_push(&self, jobs: &[OutboxJob], now: i64) -> DbResult<i64> {
        with_tx!(self, |tx| {
            let mut last = 0;
            for job in jobs {
                last = scalar!(
                    tx.conn(),
                    fetch_one,
                    "INSERT INTO synapse_outbox (kind, localpart, device_id, display_name, \
                     created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                    job.kind.as_str(),
                    &job.localpart,
                    &job.device_id,
                    &job.display_name,
                    now
                )?;
            }
            tx.commit().await?;
            Ok(last)
        })
    }

    /// The oldest `limit` jobs, due or not (order matters more than due time).
    pub async fn outbox_head(&self, limit: i64) -> DbResult<Vec<OutboxEntry>> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_all,
            "SELECT id, kind, localpart, device_id, display_name, attempts, next_attempt_at \
             FROM synapse_outbox ORDER BY id LIMIT $1",
            limit
        ))
        .and_then(|rows: Vec<OutboxRow>| rows.into_iter().map(entry).collect())
    }

    /// Removes a delivered (or permanently refused) job.
    pub async fn outbox_done(&self, id: i64) -> DbResult<()> {
        with_conn!(self, |c| {
            exec!(c.conn(), "DELETE FROM synapse_outbox WHERE id = $1", id)?;
            Ok(())
        })
    }

    /// Records a failed delivery; `error` must carry no secret.
    pub async fn outbox_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> DbResult<()> {
        with_conn!(self, |c| exec!(
            c.conn(),
            "UPDATE synapse_outbox SET attempts = attempts + 1, next_attempt_at = $1, \
             last_error = $2 WHERE id = $3",
            next_attempt_at,
            error,
            id
        ))
        .map(drop)
    }

    /// Whether job `id` is still queued.
    pub async fn outbox_pending(&self, id: i64) -> DbResult<bool> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            "SELECT 1 FROM synapse_outbox WHERE id = $1",
            id
        ))
        .map(|row: Option<(i32,)>| row.is_some())
    }

    /// `(localpart, device_id)` of the session an access or refresh token belongs to, revoked
    /// or not (to tell Synapse which device a revocation ends).
    pub async fn token_owner(&self, token_hash: &str) -> DbResult<Option<(String, String)>> {
        with_conn!(self, |c| fetch!(
            c.conn(),
            fetch_optional,
            "SELECT s.localpart, s.device_id FROM oauth_sessions s WHERE s.session_id = ( \
             SELECT session_id FROM access_tokens WHERE token_hash = $1 \
             UNION ALL SELECT session_id FROM refresh_tokens WHERE token_hash = $1 LIMIT 1)",
            token_hash
        ))
    }
}
