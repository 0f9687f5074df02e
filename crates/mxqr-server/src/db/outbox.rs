//! The Synapse provisioning outbox (delegated mode): jobs for Synapse's `/_synapse/mas/*` API,
//! stored before they are sent so that a Synapse outage or an mxqr restart loses nothing.
//!
//! Jobs are drained strictly in insertion order (a device's upsert must reach Synapse before
//! its deletion), so a job that keeps failing holds the ones behind it until it succeeds or
//! is dropped as permanently refused.

use sqlx::Row;

use super::postgres::{LegacyPg, pg_error};
use super::sqlite::{LegacySqlite, backend};
use super::{DbError, DbResult};
use crate::store::BoxFuture;

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

/// Outbox operations, a supertrait of [`super::Db`].
pub trait OutboxDb: Send + Sync {
    /// Appends jobs (in order) and returns the ID of the last one.
    fn outbox_push<'a>(&'a self, jobs: &'a [OutboxJob], now: i64) -> BoxFuture<'a, DbResult<i64>>;
    /// The oldest `limit` jobs, due or not (order matters more than due time).
    fn outbox_head(&self, limit: i64) -> BoxFuture<'_, DbResult<Vec<OutboxEntry>>>;
    /// Removes a delivered (or permanently refused) job.
    fn outbox_done(&self, id: i64) -> BoxFuture<'_, DbResult<()>>;
    /// Records a failed delivery; `error` must carry no secret.
    fn outbox_retry<'a>(
        &'a self,
        id: i64,
        next_attempt_at: i64,
        error: &'a str,
    ) -> BoxFuture<'a, DbResult<()>>;
    /// Whether job `id` is still queued.
    fn outbox_pending(&self, id: i64) -> BoxFuture<'_, DbResult<bool>>;
    /// `(localpart, device_id)` of the session an access or refresh token belongs to, revoked
    /// or not (to tell Synapse which device a revocation ends).
    fn token_owner<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<(String, String)>>>;
}

fn entry(
    id: i64,
    kind: &str,
    localpart: String,
    device_id: Option<String>,
    display_name: Option<String>,
    attempts: i64,
    next_attempt_at: i64,
) -> DbResult<OutboxEntry> {
    let kind = OutboxKind::parse(kind)
        .ok_or_else(|| DbError::Unreadable(format!("unknown outbox job kind {kind:?}")))?;
    Ok(OutboxEntry {
        id,
        job: OutboxJob {
            kind,
            localpart,
            device_id,
            display_name,
        },
        attempts,
        next_attempt_at,
    })
}

const HEAD_COLUMNS: &str = "SELECT id, kind, localpart, device_id, display_name, attempts, next_attempt_at \
     FROM synapse_outbox ORDER BY id LIMIT ";

const OWNER_SQL: &str = "SELECT s.localpart, s.device_id FROM oauth_sessions s WHERE s.session_id = ( \
       SELECT session_id FROM access_tokens WHERE token_hash = $1 \
       UNION ALL SELECT session_id FROM refresh_tokens WHERE token_hash = $1 LIMIT 1)";

impl OutboxDb for LegacySqlite {
    fn outbox_push<'a>(&'a self, jobs: &'a [OutboxJob], now: i64) -> BoxFuture<'a, DbResult<i64>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(backend)?;
            let mut last = 0;
            for job in jobs {
                last = sqlx::query(
                    "INSERT INTO synapse_outbox (kind, localpart, device_id, display_name, \
                     created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(job.kind.as_str())
                .bind(&job.localpart)
                .bind(&job.device_id)
                .bind(&job.display_name)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .last_insert_rowid();
            }
            tx.commit().await.map_err(backend)?;
            Ok(last)
        })
    }

    fn outbox_head(&self, limit: i64) -> BoxFuture<'_, DbResult<Vec<OutboxEntry>>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("{HEAD_COLUMNS}?"))
                .bind(limit)
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| {
                    entry(
                        r.try_get("id").map_err(backend)?,
                        r.try_get::<String, _>("kind").map_err(backend)?.as_str(),
                        r.try_get("localpart").map_err(backend)?,
                        r.try_get("device_id").map_err(backend)?,
                        r.try_get("display_name").map_err(backend)?,
                        r.try_get("attempts").map_err(backend)?,
                        r.try_get("next_attempt_at").map_err(backend)?,
                    )
                })
                .collect()
        })
    }

    fn outbox_done(&self, id: i64) -> BoxFuture<'_, DbResult<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM synapse_outbox WHERE id = ?")
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn outbox_retry<'a>(
        &'a self,
        id: i64,
        next_attempt_at: i64,
        error: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE synapse_outbox SET attempts = attempts + 1, next_attempt_at = ?, \
                 last_error = ? WHERE id = ?",
            )
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn outbox_pending(&self, id: i64) -> BoxFuture<'_, DbResult<bool>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT 1 FROM synapse_outbox WHERE id = ?")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(backend)?;
            Ok(row.is_some())
        })
    }

    fn token_owner<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<(String, String)>>> {
        Box::pin(async move {
            let row = sqlx::query(&OWNER_SQL.replace("$1", "?1"))
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await
                .map_err(backend)?;
            row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .transpose()
                .map_err(backend)
        })
    }
}

impl OutboxDb for LegacyPg {
    fn outbox_push<'a>(&'a self, jobs: &'a [OutboxJob], now: i64) -> BoxFuture<'a, DbResult<i64>> {
        self.bounded(async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            let mut last = 0;
            for job in jobs {
                last = sqlx::query_scalar::<_, i64>(
                    "INSERT INTO synapse_outbox (kind, localpart, device_id, display_name, \
                     created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                )
                .bind(job.kind.as_str())
                .bind(&job.localpart)
                .bind(&job.device_id)
                .bind(&job.display_name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(last)
        })
    }

    fn outbox_head(&self, limit: i64) -> BoxFuture<'_, DbResult<Vec<OutboxEntry>>> {
        self.bounded(async move {
            let rows = sqlx::query(&format!("{HEAD_COLUMNS}$1"))
                .bind(limit)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    entry(
                        r.try_get("id").map_err(pg_error)?,
                        r.try_get::<String, _>("kind").map_err(pg_error)?.as_str(),
                        r.try_get("localpart").map_err(pg_error)?,
                        r.try_get("device_id").map_err(pg_error)?,
                        r.try_get("display_name").map_err(pg_error)?,
                        i64::from(r.try_get::<i32, _>("attempts").map_err(pg_error)?),
                        r.try_get("next_attempt_at").map_err(pg_error)?,
                    )
                })
                .collect()
        })
    }

    fn outbox_done(&self, id: i64) -> BoxFuture<'_, DbResult<()>> {
        self.bounded(async move {
            sqlx::query("DELETE FROM synapse_outbox WHERE id = $1")
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn outbox_retry<'a>(
        &'a self,
        id: i64,
        next_attempt_at: i64,
        error: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        self.bounded(async move {
            sqlx::query(
                "UPDATE synapse_outbox SET attempts = attempts + 1, next_attempt_at = $1, \
                 last_error = $2 WHERE id = $3",
            )
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn outbox_pending(&self, id: i64) -> BoxFuture<'_, DbResult<bool>> {
        self.bounded(async move {
            let row = sqlx::query("SELECT 1 FROM synapse_outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(pg_error)?;
            Ok(row.is_some())
        })
    }

    fn token_owner<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<(String, String)>>> {
        self.bounded(async move {
            let row = sqlx::query(OWNER_SQL)
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await
                .map_err(pg_error)?;
            row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .transpose()
                .map_err(pg_error)
        })
    }
}
