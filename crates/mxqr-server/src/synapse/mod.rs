//! Delegated mode (`[homeserver] mode = "synapse"`): mxqr is the authentication service of a
//! Synapse configured with `matrix_authentication_service`.
//!
//! Synapse asks `POST /oauth2/introspect` about every access token it has not cached, with
//! the shared secret as bearer token. mxqr in turn tells Synapse about users and devices
//! through its `/_synapse/mas/*` API: those calls go through the durable outbox
//! ([`crate::accounts::SqlDb::outbox_push`]) drained by [`SynapseLink::drain`], so a Synapse outage delays
//! them instead of losing them. Calls whose effect the user waits for (a new device's first
//! token, a sign-out, a cross-signing reset approval) are also awaited briefly, so that
//! Synapse already knows when the response arrives: Synapse caches introspection results for
//! two minutes and ends a token early only when its device is gone. The OAuth server reaches
//! this module only through its hooks ([`SynapseHooks`]), never the other way round.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::{DbError, DbResult, OutboxEntry, OutboxJob, OutboxKind, SharedDb};
use crate::oauth::OAuthState;
use crate::oauth::limits::FailureLimiter;
use crate::sync::lock;

mod hooks;
mod introspect;

pub use hooks::SynapseHooks;
pub use introspect::{SynapseState, routes};

/// How long a request waits for its provisioning to reach Synapse before answering anyway
/// (the outbox keeps trying).
pub const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// Per-call limit on a request to Synapse.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Back-off bounds between failed deliveries.
const BACKOFF_MIN_MS: i64 = 500;
const BACKOFF_MAX_MS: i64 = 60_000;

/// How often the outbox is looked at without a wake-up (jobs queued by `mxqr admin` or
/// another instance).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// Reconciliation jobs moved into the outbox at a time (see [`SynapseLink::reconcile_all`]).
const RECONCILE_BATCH: usize = 16;

/// Devices remembered as known to Synapse, at most; past it the memory starts over (the
/// cost is one more idempotent upsert per device).
const PROVISIONED_CAP: usize = 100_000;

/// Wrong shared secrets an address may present within [`SECRET_FAILURE_WINDOW`] before
/// introspection answers it 429 (Synapse never sends a wrong one).
const SECRET_FAILURES_MAX: u32 = 10;
const SECRET_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The connection to Synapse: its provisioning API and the shared secret.
pub struct SynapseLink {
    http: reqwest::Client,
    base: String,
    secret: String,
    /// SHA-256 of the secret: presented secrets are compared digest to digest, so the time
    /// taken depends neither on the secret's length nor on a common prefix.
    secret_digest: [u8; 32],
    /// Wrong secrets per address.
    pub(crate) secret_failures: FailureLimiter,
    /// Bumped when jobs are queued, to wake the drainer.
    queued: tokio::sync::Notify,
    /// Bumped after each drain pass, to wake requests waiting for their jobs.
    drained: tokio::sync::watch::Sender<u64>,
    /// `(localpart, device_id)` this process has seen reach Synapse. Sessions started
    /// elsewhere (`mxqr admin issue-token`, another instance, before synapse mode was on, or
    /// lost in a crash before their job was queued) are provisioned at their first
    /// introspection instead, before Synapse gets the answer.
    provisioned: Mutex<HashSet<(String, String)>>,
    /// Users whose device list is still to be reconciled.
    reconciling: Mutex<VecDeque<String>>,
}

impl std::fmt::Debug for SynapseLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("SynapseLink")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a delivery failed.
enum Failure {
    /// Worth retrying (Synapse down, 5xx, 429, timeout).
    Transient(String),
    /// Synapse refused the job for good; it is dropped.
    Permanent(String),
    /// The user does not exist in Synapse yet: provision it, then try again.
    UserMissing,
}

impl From<DbError> for Failure {
    /// mxqr's own store failed while building the request: worth retrying.
    fn from(err: DbError) -> Self {
        Self::Transient(err.to_string())
    }
}

impl SynapseLink {
    /// A link to Synapse at `synapse_url` authenticating with `secret`.
    pub fn new(synapse_url: &str, secret: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            base: synapse_url.trim_end_matches('/').to_owned(),
            secret_digest: Sha256::digest(secret.as_bytes()).into(),
            secret,
            secret_failures: FailureLimiter::new(SECRET_FAILURES_MAX, SECRET_FAILURE_WINDOW),
            queued: tokio::sync::Notify::new(),
            drained: tokio::sync::watch::Sender::new(0),
            provisioned: Mutex::new(HashSet::new()),
            reconciling: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether this process saw the device reach Synapse.
    pub fn is_provisioned(&self, localpart: &str, device_id: &str) -> bool {
        lock(&self.provisioned).contains(&(localpart.to_owned(), device_id.to_owned()))
    }

    /// Records (or, with `known = false`, forgets) that Synapse has the device.
    pub fn set_provisioned(&self, localpart: &str, device_id: &str, known: bool) {
        let mut set = lock(&self.provisioned);
        let key = (localpart.to_owned(), device_id.to_owned());
        if known {
            if set.len() >= PROVISIONED_CAP {
                set.clear();
            }
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Whether `presented` is the shared secret (constant time, on SHA-256 digests).
    pub fn secret_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.secret_digest))
    }

    /// Queues `jobs` and waits up to [`DELIVERY_WAIT`] for Synapse to have them; `false`
    /// when it did not in time. A store failure is returned; a slow or absent Synapse is only
    /// logged (the outbox retries).
    pub async fn enqueue_and_wait(
        &self,
        db: &SharedDb,
        jobs: &[OutboxJob],
        now: i64,
    ) -> DbResult<bool> {
        let mut drained = self.drained.subscribe();
        let last = db.outbox_push(jobs, now).await?;
        self.queued.notify_one();
        let wait = async {
            loop {
                if !db.outbox_pending(last).await? {
                    return DbResult::Ok(true);
                }
                if drained.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(DELIVERY_WAIT, wait).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    job = jobs.last().map(|j| j.kind.as_str()),
                    "Synapse has not taken the job yet; the outbox keeps retrying"
                );
                Ok(false)
            }
        }
    }

    /// Schedules a device-list reconciliation (`sync_devices`) of every user: Synapse's
    /// devices become the live sessions, whatever was lost while mxqr was away (a deletion
    /// that crashed before its job was queued, sessions ended while in standalone mode). Each
    /// job reads the sessions when it is sent, so it cannot undo a later sign-in. The jobs
    /// are fed to the outbox [`RECONCILE_BATCH`] at a time and only when it is empty, so that
    /// with many users a new sign-in's provisioning never waits behind the whole pass.
    /// Returns the number of users.
    pub async fn reconcile_all(&self, db: &SharedDb) -> DbResult<usize> {
        let users = db.users().await?;
        let count = users.len();
        lock(&self.reconciling).extend(users.into_iter().map(|u| u.localpart));
        self.queued.notify_one();
        Ok(count)
    }

    /// Moves the next few reconciliation jobs into the (empty) outbox; whether there were any.
    async fn feed_reconciliation(&self, db: &SharedDb, now: i64) -> bool {
        let batch: Vec<String> = {
            let mut pending = lock(&self.reconciling);
            let n = pending.len().min(RECONCILE_BATCH);
            pending.drain(..n).collect()
        };
        if batch.is_empty() {
            return false;
        }
        let jobs: Vec<OutboxJob> = batch
            .iter()
            .map(|lp| user_job(OutboxKind::SyncDevices, lp))
            .collect();
        if let Err(err) = db.outbox_push(&jobs, now).await {
            tracing::warn!(%err, "queueing Synapse reconciliation jobs failed; will retry");
            let mut pending = lock(&self.reconciling);
            for lp in batch.into_iter().rev() {
                pending.push_front(lp);
            }
            return false;
        }
        true
    }

    /// Drains the outbox for ever, in order, backing off while Synapse fails; first
    /// schedules the start-up reconciliation ([`Self::reconcile_all`]).
    pub async fn drain(self: Arc<Self>, oauth: OAuthState) {
        match self.reconcile_all(oauth.db()).await {
            Ok(users) => tracing::info!(users, "Synapse device lists to reconcile"),
            Err(err) => tracing::warn!(%err, "listing users for the Synapse reconciliation failed"),
        }
        loop {
            let pass = self.drain_pass(&oauth).await;
            self.wake_waiters();
            let wait = match pass {
                Ok(None) if self.feed_reconciliation(oauth.db(), oauth.now_ms()).await => {
                    continue;
                }
                Ok(wait) => wait,
                Err(err) => {
                    tracing::warn!(%err, "reading the Synapse outbox failed");
                    Some(Duration::from_secs(1))
                }
            };
            let idle = wait.unwrap_or(IDLE_POLL).min(IDLE_POLL);
            tokio::select! {
                () = self.queued.notified() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Sends due jobs from the head until the queue is empty (`None`) or a job must wait
    /// (`Some(how long)`).
    async fn drain_pass(&self, oauth: &OAuthState) -> DbResult<Option<Duration>> {
        let db = oauth.db();
        loop {
            let head = db.outbox_head(32).await?;
            if head.is_empty() {
                return Ok(None);
            }
            for entry in head {
                let now = oauth.now_ms();
                if entry.next_attempt_at > now {
                    return Ok(Some(wait_ms(entry.next_attempt_at - now)));
                }
                match self.deliver(oauth, &entry.job).await {
                    Ok(()) => db.outbox_done(entry.id).await?,
                    Err(Failure::Permanent(why)) => {
                        tracing::warn!(
                            job = entry.job.kind.as_str(),
                            why,
                            "Synapse refused a provisioning job; dropped"
                        );
                        db.outbox_done(entry.id).await?;
                    }
                    Err(Failure::UserMissing) => {
                        // Provision first, then the job again, both at the tail.
                        let jobs = [
                            user_job(OutboxKind::ProvisionUser, &entry.job.localpart),
                            entry.job.clone(),
                        ];
                        db.outbox_push(&jobs, now).await?;
                        db.outbox_done(entry.id).await?;
                    }
                    Err(Failure::Transient(why)) => {
                        let delay = backoff_ms(&entry);
                        tracing::info!(
                            job = entry.job.kind.as_str(),
                            attempts = entry.attempts + 1,
                            retry_in_ms = delay,
                            why,
                            "Synapse provisioning failed; will retry"
                        );
                        db.outbox_retry(entry.id, now + delay, &why).await?;
                        return Ok(Some(wait_ms(delay)));
                    }
                }
            }
            // Requests whose jobs were in this batch need not wait for the queue to empty
            // (it may not, while jobs keep coming).
            self.wake_waiters();
        }
    }

    /// Tells requests in [`Self::enqueue_and_wait`] to look whether their jobs are gone.
    fn wake_waiters(&self) {
        self.drained.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn deliver(&self, oauth: &OAuthState, job: &OutboxJob) -> Result<(), Failure> {
        let lp = &job.localpart;
        let body = match job.kind {
            OutboxKind::ProvisionUser => match oauth.db().user(lp).await? {
                Some(user) => json!({ "localpart": lp, "locked": user.locked }),
                None => return Err(Failure::Permanent("no such user in mxqr".into())),
            },
            OutboxKind::UpsertDevice => {
                let mut body = json!({ "localpart": lp, "device_id": job.device_id });
                if let Some(name) = &job.display_name {
                    body["display_name"] = json!(name);
                }
                body
            }
            OutboxKind::DeleteDevice => json!({ "localpart": lp, "device_id": job.device_id }),
            OutboxKind::SyncDevices => {
                // Computed now, so the latest state wins whatever happened in between.
                let live: Vec<String> = oauth
                    .db()
                    .devices(lp)
                    .await?
                    .into_iter()
                    .filter(|d| d.session_created_at.is_some())
                    .map(|d| d.device_id)
                    .collect();
                json!({ "localpart": lp, "devices": live })
            }
            OutboxKind::AllowCrossSigningReset => json!({ "localpart": lp }),
            OutboxKind::SetDisplayName => match &job.display_name {
                Some(name) => json!({ "localpart": lp, "displayname": name }),
                None => json!({ "localpart": lp }),
            },
        };
        let endpoint = match (job.kind, &job.display_name) {
            (OutboxKind::SetDisplayName, None) => "unset_displayname",
            (kind, _) => kind.as_str(),
        };
        let url = format!("{}/_synapse/mas/{endpoint}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("request failed: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let detail: String = detail.chars().take(200).collect();
        let why = format!("{} {status}: {detail}", job.kind.as_str());
        match status.as_u16() {
            // A device or user that is already gone needs no deleting.
            404 if job.kind == OutboxKind::DeleteDevice => Ok(()),
            404 if job.kind != OutboxKind::ProvisionUser => Err(Failure::UserMissing),
            408 | 429 => Err(Failure::Transient(why)),
            400..=499 => Err(Failure::Permanent(why)),
            _ => Err(Failure::Transient(why)),
        }
    }
}

/// A wait of `ms` milliseconds (none when negative).
fn wait_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn backoff_ms(entry: &OutboxEntry) -> i64 {
    let exp = u32::try_from(entry.attempts.clamp(0, 16)).unwrap_or(16);
    BACKOFF_MIN_MS
        .saturating_mul(1_i64 << exp)
        .min(BACKOFF_MAX_MS)
}

/// A job about a user as a whole.
pub fn user_job(kind: OutboxKind, localpart: &str) -> OutboxJob {
    OutboxJob {
        kind,
        localpart: localpart.to_owned(),
        device_id: None,
        display_name: None,
    }
}

/// A job about one device.
pub fn device_job(kind: OutboxKind, localpart: &str, device_id: &str) -> OutboxJob {
    OutboxJob {
        device_id: Some(device_id.to_owned()),
        ..user_job(kind, localpart)
    }
}
