//! PostgreSQL back end of [`super::Store`]: sessions shared by several mxqr instances.
//!
//! Every rule of the in-memory store holds across instances because the database decides it:
//! a write is one statement that compares and sets the token (the retried-write rule is read
//! from the same snapshot), creation applies the session cap in one round trip through a SQL
//! function, and expiry uses the database clock and an index on `expires_at`. Long-polls wait
//! on a per-instance map of [`Notify`] handles; every write, delete and eviction sends
//! `NOTIFY mxqr_rendezvous, '<id hex>'`, and each instance's `LISTEN` connection wakes its
//! local waiters, which then read the session again. Waiters also wake at the session's expiry
//! and whenever the listening connection was lost, so a missed notification costs a re-read,
//! never a hung poll.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::pg_gate::PgGate;
use crate::sync::lock;

use super::{
    Counters, SequenceToken, SessionId, SessionLimits, SessionMeta, Snapshot, Store, StoreError,
    StoreStats, Transport, Write,
};

/// Channel carrying the hex ID of every session written, deleted or evicted.
const CHANNEL: &str = "mxqr_rendezvous";

/// Longest wait for a pooled connection: past it the request gets a 503, not a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause before the listening connection is re-established after a failure.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Expired sessions deleted per statement, so a mass expiry never holds long locks.
const PURGE_BATCH: i64 = 1000;

/// Transaction IDs remembered per session, as in the memory store.
const TXN_LOG_LEN: i64 = 4;

/// Why the PostgreSQL store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    /// The URL does not parse as a PostgreSQL connection string.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(#[source] sqlx::Error),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] sqlx::Error),
    /// The schema could not be created or upgraded.
    #[error("cannot migrate the PostgreSQL rendezvous schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Local waiters per session ID; entries exist only while someone waits. Taken with
/// [`lock`]: the map stays consistent whatever panicked while holding it.
#[derive(Default)]
struct Waiters(Mutex<HashMap<u128, Arc<Notify>>>);

impl Waiters {
    fn register(self: &Arc<Self>, id: u128) -> WaiterGuard {
        let notify = lock(&self.0).entry(id).or_default().clone();
        WaiterGuard {
            waiters: self.clone(),
            id,
            notify,
        }
    }

    fn wake(&self, id: u128) {
        if let Some(notify) = lock(&self.0).get(&id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for notify in lock(&self.0).values() {
            notify.notify_waiters();
        }
    }
}

/// A registration in [`Waiters`], removed with the last waiter of its session (also when a
/// long-poll is cancelled).
struct WaiterGuard {
    waiters: Arc<Waiters>,
    id: u128,
    notify: Arc<Notify>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.waiters.0);
        // Two references left: the map's and ours. Registrations happen under this lock too.
        if map
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            map.remove(&self.id);
        }
    }
}

/// The PostgreSQL back end.
pub struct PostgresStore {
    pool: PgPool,
    /// Admission: one permit per pooled connection, the listener's aside.
    gate: PgGate,
    limits: SessionLimits,
    waiters: Arc<Waiters>,
    counters: Counters,
    listener: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The code a transport is stored as: its [`Transport::index`].
fn transport_code(transport: Transport) -> i16 {
    transport.index() as i16
}

fn transport_from_code(code: i16) -> Option<Transport> {
    Transport::ALL.get(usize::try_from(code).ok()?).copied()
}

/// Tokens are u64 bit patterns stored in `BIGINT`.
fn token_sql(token: u64) -> i64 {
    i64::from_ne_bytes(token.to_ne_bytes())
}

fn token_rust(token: i64) -> u64 {
    u64::from_ne_bytes(token.to_ne_bytes())
}

fn id_sql(id: SessionId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

fn id_hex(id: SessionId) -> String {
    format!("{:032x}", id.0)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Any database failure is an outage to the HTTP layer (a 503); its text goes to the log.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Unavailable(err.to_string())
    }
}

/// Fingerprint of a write for transaction-ID idempotency: stable across instances, unlike the
/// memory store's per-process hasher.
fn fingerprint(write: &Write) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(write.expected.0.to_be_bytes());
    hash.update(write.data.as_bytes());
    hash.finalize().to_vec()
}

/// Reads `expires_in_ms` and `modified_ms` columns into metadata.
fn meta_from_row(row: &PgRow, token: u64) -> Result<SessionMeta, sqlx::Error> {
    let expires_in_ms: i64 = row.try_get("expires_in_ms")?;
    let modified_ms: i64 = row.try_get("modified_ms")?;
    Ok(SessionMeta {
        token: SequenceToken(token),
        expires_in: Duration::from_millis(u64::try_from(expires_in_ms).unwrap_or(0)),
        last_modified: UNIX_EPOCH + Duration::from_millis(u64::try_from(modified_ms).unwrap_or(0)),
    })
}

/// Columns every read returns, computed by the database clock.
const META_COLUMNS: &str = "(extract(epoch FROM expires_at - now()) * 1000)::BIGINT AS expires_in_ms, \
     (extract(epoch FROM modified_at) * 1000)::BIGINT AS modified_ms";

/// Compare-and-set in one statement. `upd` writes when `$3` is the current token; `cur` reads
/// the same snapshot to tell a lost race or stale token (`2`) from a retry of the latest write
/// (`1`: `$3` is the token it replaced and the data is identical). The new token is `$4`, or
/// `$5` should `$4` equal the token being replaced (the caller draws both different from `$3`
/// and from each other), so no write reuses either of the session's last two tokens. A write
/// that would take the payload bytes of all sessions past `$11` is not made (`3`, with the
/// growth needed), so the caller can make room first.
const UPDATE_SQL: &str = "\
WITH upd AS (
    UPDATE rendezvous_sessions SET
        prev_token = token,
        token = CASE WHEN prev_token = $4 THEN $5 ELSE $4 END,
        data = $6,
        modified_at = now(),
        expires_at = CASE WHEN $7 THEN GREATEST(expires_at, LEAST(
            now() + $8 * INTERVAL '1 millisecond',
            created_at + $9 * INTERVAL '1 millisecond')) ELSE expires_at END
    WHERE id = $1 AND transport = $2 AND token = $3 AND expires_at > now()
        AND (octet_length($6) <= octet_length(data) OR
             (SELECT bytes FROM rendezvous_counts) + octet_length($6) - octet_length(data) <= $11)
    RETURNING token, expires_at, modified_at
), cur AS (
    SELECT token, prev_token, data, expires_at, modified_at FROM rendezvous_sessions
    WHERE id = $1 AND transport = $2 AND expires_at > now()
), announced AS (
    SELECT pg_notify('mxqr_rendezvous', $10)::TEXT AS sent FROM upd
)
SELECT 0::SMALLINT AS outcome, token,
    (extract(epoch FROM expires_at - now()) * 1000)::BIGINT AS expires_in_ms,
    (extract(epoch FROM modified_at) * 1000)::BIGINT AS modified_ms,
    (SELECT count(*) FROM announced) AS notified,
    0::BIGINT AS growth
FROM upd
UNION ALL
SELECT CASE WHEN token = $3 THEN 3 WHEN prev_token = $3 AND data = $6 THEN 1 ELSE 2 END::SMALLINT,
    token,
    (extract(epoch FROM expires_at - now()) * 1000)::BIGINT,
    (extract(epoch FROM modified_at) * 1000)::BIGINT,
    0,
    (octet_length($6) - octet_length(data))::BIGINT
FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)";

/// Where the transaction-ID path ended.
enum TxnStep {
    /// A new transaction ID: the compare-and-set ran and was logged; commit.
    Fresh(CasOutcome),
    /// A repeated transaction ID: its first answer again; nothing to commit.
    Repeat(Result<SessionMeta, StoreError>),
}

/// What a compare-and-set statement found.
enum CasOutcome {
    Written(SessionMeta),
    Retry(SessionMeta),
    Conflict,
    NotFound,
    /// The token is current but the write would exceed the byte budget by this growth.
    OverBudget(i64),
}

impl PostgresStore {
    /// Connects to `url` with a pool of `max_connections`, creates or upgrades the schema and
    /// starts listening for wake-ups from other instances.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        limits: SessionLimits,
    ) -> Result<Self, PgStoreError> {
        let options = PgConnectOptions::from_str(url).map_err(PgStoreError::Url)?;
        let pool = PgPoolOptions::new()
            // One connection is held by the listener.
            .max_connections(max_connections.max(1) + 1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        // `migrations/rendezvous-postgres/`, apart from the SQLite ones. Its dated versions never collide with
        // another migration set sharing the database (accounts on PostgreSQL, later), whose
        // entries it ignores. Instances starting at once queue on sqlx's advisory lock.
        let mut migrator = sqlx::migrate!("./migrations/rendezvous-postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        // Listen before serving: a long-poll started at once must not miss its wake-up.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let waiters = Arc::new(Waiters::default());
        let task = tokio::spawn(listen(pool.clone(), listener, waiters.clone()));
        let store = Self {
            pool,
            gate: PgGate::new(max_connections),
            limits,
            waiters,
            counters: Counters::default(),
            listener: task,
        };
        store.refresh_live().await?;
        Ok(store)
    }

    /// Runs one store operation with the overall time bound.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.gate.run(operation, StoreError::Unavailable).await
    }

    /// See [`Store::stats`].
    pub(super) fn stats(&self) -> StoreStats {
        self.counters.stats()
    }

    async fn refresh_live(&self) -> Result<(), sqlx::Error> {
        let row = sqlx::query("SELECT live_msc4388, live_msc4108 FROM rendezvous_counts")
            .fetch_one(&self.pool)
            .await?;
        self.set_live_from(&row)
    }

    /// Takes the live counts from a row's `live_msc4388` and `live_msc4108` columns.
    fn set_live_from(&self, row: &PgRow) -> Result<(), sqlx::Error> {
        self.counters
            .set_live(row.try_get("live_msc4388")?, row.try_get("live_msc4108")?);
        Ok(())
    }

    /// What a row of `mxqr_rendezvous_make_room` says: no room for `room_in_ms` yet
    /// ([`StoreError::Full`]), or room made by removing the sessions its `evicted` and
    /// `expired` columns list (transport codes), which are counted.
    fn made_room(&self, row: &PgRow) -> Result<(), StoreError> {
        if let Some(room_in_ms) = row.try_get::<Option<i64>, _>("room_in_ms")? {
            return Err(self.full(room_in_ms));
        }
        for (column, counter) in [
            ("evicted", &self.counters.evicted),
            ("expired", &self.counters.expired),
        ] {
            let codes: Vec<i16> = row.try_get(column)?;
            for t in codes.into_iter().filter_map(transport_from_code) {
                Counters::bump(counter, t);
            }
        }
        Ok(())
    }

    /// See [`Store::create`]. Every operation runs inside [`bounded`](Self::bounded), but a
    /// wait, which bounds each of its reads instead.
    pub(super) async fn create(
        &self,
        transport: Transport,
        data: Arc<str>,
    ) -> Result<(SessionId, SessionMeta), StoreError> {
        self.bounded(async {
            // A taken ID (2^-128 per try) yields no row: draw again.
            for _ in 0..4 {
                let id = SessionId::random();
                let token = SequenceToken::fresh(&[]);
                let row = sqlx::query(
                    "SELECT expires_in_ms, modified_ms, live_msc4388, live_msc4108, evicted, expired, \
                     room_in_ms FROM mxqr_rendezvous_create_bounded($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(id_sql(id))
                .bind(transport_code(transport))
                .bind(&*data)
                .bind(token_sql(token.0))
                .bind(ms(self.limits.ttl))
                .bind(self.max_sessions())
                .bind(self.max_bytes())
                .bind(ms(self.limits.protect_written_within))
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { continue };
                self.made_room(&row)?;
                let meta = meta_from_row(&row, token.0)?;
                self.set_live_from(&row)?;
                Counters::bump(&self.counters.created, transport);
                return Ok((id, meta));
            }
            Err(StoreError::Unavailable(
                "could not draw an unused session ID".into(),
            ))
        })
        .await
    }

    fn max_sessions(&self) -> i64 {
        i64::try_from(self.limits.max_sessions.max(1)).unwrap_or(i64::MAX)
    }

    fn max_bytes(&self) -> i64 {
        i64::try_from(self.limits.max_total_bytes).unwrap_or(i64::MAX)
    }

    /// [`StoreError::Full`] for a wait the database computed.
    fn full(&self, room_in_ms: i64) -> StoreError {
        let wait = Duration::from_millis(u64::try_from(room_in_ms).unwrap_or(0));
        StoreError::full_after(wait, &self.limits)
    }

    /// Makes room for a write to `keep` that grows its payload by `growth` bytes.
    async fn room_for_growth(&self, growth: i64, keep: SessionId) -> Result<(), StoreError> {
        let row = sqlx::query(
            "SELECT room_in_ms, evicted, expired FROM mxqr_rendezvous_make_room(0, $1, $2, $3, $4, $5)",
        )
        .bind(growth)
        .bind(self.max_sessions())
        .bind(self.max_bytes())
        .bind(ms(self.limits.protect_written_within))
        .bind(id_sql(keep))
        .fetch_one(&self.pool)
        .await?;
        self.made_room(&row)
    }

    /// See [`Store::get`].
    pub(super) async fn get(
        &self,
        transport: Transport,
        id: SessionId,
    ) -> Result<Snapshot, StoreError> {
        self.bounded(self.get_on(&self.pool, transport, id)).await
    }

    /// A live session, on the pool or inside a transaction.
    async fn get_on<'e>(
        &self,
        executor: impl Executor<'e, Database = Postgres>,
        transport: Transport,
        id: SessionId,
    ) -> Result<Snapshot, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT data, token, {META_COLUMNS} FROM rendezvous_sessions \
             WHERE id = $1 AND transport = $2 AND expires_at > now()"
        ))
        .bind(id_sql(id))
        .bind(transport_code(transport))
        .fetch_optional(executor)
        .await?
        .ok_or(StoreError::NotFound)?;
        let data: String = row.try_get("data")?;
        let token: i64 = row.try_get("token")?;
        Ok(Snapshot {
            data: Arc::from(data),
            meta: meta_from_row(&row, token_rust(token))?,
        })
    }

    /// The compare-and-set statement, on the pool or inside a transaction.
    async fn compare_and_set<'e>(
        &self,
        executor: impl Executor<'e, Database = Postgres>,
        transport: Transport,
        id: SessionId,
        write: &Write,
    ) -> Result<CasOutcome, StoreError> {
        let first = SequenceToken::fresh(&[write.expected.0]);
        let second = SequenceToken::fresh(&[write.expected.0, first.0]);
        let row = sqlx::query(UPDATE_SQL)
            .bind(id_sql(id))
            .bind(transport_code(transport))
            .bind(token_sql(write.expected.0))
            .bind(token_sql(first.0))
            .bind(token_sql(second.0))
            .bind(&*write.data)
            .bind(self.limits.renew_on_write)
            .bind(ms(self.limits.ttl))
            .bind(ms(self.limits.max_lifetime))
            .bind(id_hex(id))
            .bind(self.max_bytes())
            .fetch_optional(executor)
            .await?;
        let Some(row) = row else {
            return Ok(CasOutcome::NotFound);
        };
        let outcome: i16 = row.try_get("outcome")?;
        let token = token_rust(row.try_get("token")?);
        let meta = meta_from_row(&row, token)?;
        Ok(match outcome {
            0 => CasOutcome::Written(meta),
            1 => CasOutcome::Retry(meta),
            3 => CasOutcome::OverBudget(row.try_get("growth")?),
            _ => CasOutcome::Conflict,
        })
    }

    /// See [`Store::update`].
    pub(super) async fn update(
        &self,
        transport: Transport,
        id: SessionId,
        write: Write,
    ) -> Result<SessionMeta, StoreError> {
        self.bounded(async {
            let outcome = match &write.txn_id {
                None => match self
                    .compare_and_set(&self.pool, transport, id, &write)
                    .await?
                {
                    CasOutcome::OverBudget(growth) => {
                        self.room_for_growth(growth, id).await?;
                        self.compare_and_set(&self.pool, transport, id, &write)
                            .await?
                    }
                    outcome => outcome,
                },
                Some(txn_id) => {
                    let mut tx = self.pool.begin().await?;
                    match self
                        .update_with_txn_id(&mut tx, transport, id, &write, txn_id)
                        .await?
                    {
                        TxnStep::Fresh(outcome) => {
                            tx.commit().await?;
                            outcome
                        }
                        TxnStep::Repeat(answer) => return answer,
                    }
                }
            };
            match outcome {
                CasOutcome::Written(meta) => {
                    // The NOTIFY reaches this instance too; waking here saves its round trip.
                    self.waiters.wake(id.0);
                    Ok(meta)
                }
                CasOutcome::Retry(meta) => Ok(meta),
                CasOutcome::Conflict => Err(StoreError::ConcurrentWrite),
                CasOutcome::NotFound => Err(StoreError::NotFound),
                // Room was made, then taken by a concurrent write: try again shortly.
                CasOutcome::OverBudget(_) => Err(self.full(0)),
            }
        })
        .await
    }

    /// The transaction-ID path, under a row lock so the log and the write agree.
    async fn update_with_txn_id(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        transport: Transport,
        id: SessionId,
        write: &Write,
        txn_id: &str,
    ) -> Result<TxnStep, StoreError> {
        let locked = sqlx::query(
            "SELECT 1 FROM rendezvous_sessions \
             WHERE id = $1 AND transport = $2 AND expires_at > now() FOR UPDATE",
        )
        .bind(id_sql(id))
        .bind(transport_code(transport))
        .fetch_optional(&mut **tx)
        .await?;
        if locked.is_none() {
            return Ok(TxnStep::Fresh(CasOutcome::NotFound));
        }
        let fingerprint = fingerprint(write);
        let earlier: Option<(Vec<u8>, Option<i64>)> = sqlx::query_as(
            "SELECT fingerprint, outcome FROM rendezvous_txns WHERE session_id = $1 AND txn_id = $2",
        )
        .bind(id_sql(id))
        .bind(txn_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some((seen, outcome)) = earlier {
            if seen != fingerprint {
                return Ok(TxnStep::Repeat(Err(StoreError::TxnReused)));
            }
            let Some(token) = outcome else {
                return Ok(TxnStep::Repeat(Err(StoreError::ConcurrentWrite)));
            };
            let mut current = self.get_on(&mut **tx, transport, id).await?.meta;
            current.token = SequenceToken(token_rust(token));
            return Ok(TxnStep::Repeat(Ok(current)));
        }
        let mut outcome = self
            .compare_and_set(&mut **tx, transport, id, write)
            .await?;
        if let CasOutcome::OverBudget(growth) = outcome {
            // Nothing logged: a full store is no answer to remember for this transaction.
            self.room_for_growth(growth, id).await?;
            outcome = self
                .compare_and_set(&mut **tx, transport, id, write)
                .await?;
            if let CasOutcome::OverBudget(_) = outcome {
                return Ok(TxnStep::Repeat(Err(self.full(0))));
            }
        }
        let answered = match &outcome {
            CasOutcome::Written(meta) | CasOutcome::Retry(meta) => Some(token_sql(meta.token.0)),
            CasOutcome::Conflict | CasOutcome::NotFound | CasOutcome::OverBudget(_) => None,
        };
        sqlx::query(
            "INSERT INTO rendezvous_txns (session_id, txn_id, fingerprint, outcome) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id_sql(id))
        .bind(txn_id)
        .bind(fingerprint)
        .bind(answered)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM rendezvous_txns WHERE session_id = $1 AND seq <= (\
                SELECT seq FROM rendezvous_txns WHERE session_id = $1 \
                ORDER BY seq DESC OFFSET $2 LIMIT 1)",
        )
        .bind(id_sql(id))
        .bind(TXN_LOG_LEN)
        .execute(&mut **tx)
        .await?;
        Ok(TxnStep::Fresh(outcome))
    }

    /// See [`Store::delete`].
    pub(super) async fn delete(
        &self,
        transport: Transport,
        id: SessionId,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let deleted = sqlx::query(
                "WITH gone AS (DELETE FROM rendezvous_sessions \
                     WHERE id = $1 AND transport = $2 AND expires_at > now() RETURNING id) \
                 SELECT pg_notify('mxqr_rendezvous', $3)::TEXT AS sent FROM gone",
            )
            .bind(id_sql(id))
            .bind(transport_code(transport))
            .bind(id_hex(id))
            .fetch_optional(&self.pool)
            .await?;
            if deleted.is_none() {
                return Err(StoreError::NotFound);
            }
            self.waiters.wake(id.0);
            Counters::bump(&self.counters.deleted, transport);
            self.counters.live[transport.index()]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok();
            Ok(())
        })
        .await
    }

    /// See [`Store::purge_expired`].
    pub(super) async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.bounded(async {
            let mut total = 0;
            loop {
                // SKIP LOCKED: instances purging at once split the work instead of queueing.
                let gone: Vec<i16> = sqlx::query_scalar(
                    "DELETE FROM rendezvous_sessions WHERE id IN (\
                        SELECT id FROM rendezvous_sessions WHERE expires_at <= now() \
                        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                     RETURNING transport",
                )
                .bind(PURGE_BATCH)
                .fetch_all(&self.pool)
                .await?;
                for t in gone.iter().copied().filter_map(transport_from_code) {
                    Counters::bump(&self.counters.expired, t);
                }
                total += gone.len();
                if i64::try_from(gone.len()).unwrap_or(i64::MAX) < PURGE_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
            self.refresh_live().await?;
            Ok(total)
        })
        .await
    }

    /// See [`Store::wait_for_change`]. Each read is bounded; the wait lasts until `deadline`.
    pub(super) async fn wait_for_change(
        &self,
        transport: Transport,
        id: SessionId,
        since: SequenceToken,
        deadline: Instant,
    ) -> Result<Snapshot, StoreError> {
        let registration = self.waiters.register(id.0);
        loop {
            // Armed before reading, so a NOTIFY arriving between read and wait is not lost.
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snapshot = self.get(transport, id).await?;
            let now = Instant::now();
            if snapshot.meta.token != since || now >= deadline {
                return Ok(snapshot);
            }
            // Expiry sends no notification: wake when it is due and read the 404.
            let expiry = now + snapshot.meta.expires_in + Duration::from_millis(5);
            let wake_at = deadline.min(expiry);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
            }
        }
    }
}

/// Receives notifications and wakes local waiters; reconnects after any failure and then
/// wakes everyone, since notifications sent meanwhile are lost.
async fn listen(pool: PgPool, mut listener: PgListener, waiters: Arc<Waiters>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Ok(id) = u128::from_str_radix(notification.payload(), 16) {
                    waiters.wake(id);
                }
                continue;
            }
            // Connection lost and re-established by sqlx (channels re-subscribed).
            Ok(None) => {
                waiters.wake_all();
                continue;
            }
            Err(err) => {
                tracing::warn!(%err, "rendezvous LISTEN connection failed; reconnecting");
                waiters.wake_all();
            }
        }
        loop {
            tokio::time::sleep(LISTEN_RETRY).await;
            match PgListener::connect_with(&pool).await {
                Ok(mut fresh) => match fresh.listen(CHANNEL).await {
                    Ok(()) => {
                        listener = fresh;
                        waiters.wake_all();
                        break;
                    }
                    Err(err) => tracing::warn!(%err, "rendezvous LISTEN failed"),
                },
                Err(err) => tracing::warn!(%err, "rendezvous LISTEN connection failed"),
            }
        }
    }
}

/// The store the configuration asks for: PostgreSQL when `rendezvous.postgres_url` or
/// `database.url` is set, else memory.
pub async fn open_configured(config: &crate::config::Config) -> Result<Arc<Store>, PgStoreError> {
    let limits = config.session_limits();
    Ok(Arc::new(match config.rendezvous_postgres_url() {
        Some(url) => Store::Postgres(
            PostgresStore::connect(url, config.rendezvous.postgres_max_connections, limits).await?,
        ),
        None => Store::Memory(super::MemoryStore::new(limits)),
    }))
}
