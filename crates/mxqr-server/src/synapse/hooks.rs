//! The OAuth server's [`HomeserverHooks`] in synapse mode: each event becomes outbox jobs,
//! awaited briefly so that Synapse already knows when the response arrives.

use std::sync::Arc;

use super::{SynapseLink, device_job, user_job};
use crate::accounts::{DbResult, OutboxJob, OutboxKind, SharedDb};
use crate::oauth::HomeserverHooks;

/// Tells Synapse about sessions through the outbox of `db`.
pub struct SynapseHooks {
    link: Arc<SynapseLink>,
    db: SharedDb,
}

impl SynapseHooks {
    /// Hooks queueing into `db`'s outbox, drained by `link`.
    pub fn new(link: Arc<SynapseLink>, db: SharedDb) -> Self {
        Self { link, db }
    }

    /// Queues `jobs` and waits briefly for Synapse to have them (the outbox keeps trying).
    async fn send(&self, jobs: &[OutboxJob], now_ms: i64) -> DbResult<()> {
        let _delivered = self.link.enqueue_and_wait(&self.db, jobs, now_ms).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl HomeserverHooks for SynapseHooks {
    fn active(&self) -> bool {
        true
    }

    /// Provisions the user and the device (idempotent). Later re-provisionings send no
    /// name, so a name the user gave the device in Synapse stays.
    async fn session_started(
        &self,
        localpart: &str,
        device_id: &str,
        display_name: Option<String>,
        now_ms: i64,
    ) -> DbResult<()> {
        let mut upsert = device_job(OutboxKind::UpsertDevice, localpart, device_id);
        upsert.display_name = display_name;
        let jobs = [user_job(OutboxKind::ProvisionUser, localpart), upsert];
        // Marked at once: the outbox delivers what is queued, so later introspections
        // need not queue it again while Synapse is slow.
        self.link.set_provisioned(localpart, device_id, true);
        if let Err(err) = self.send(&jobs, now_ms).await {
            self.link.set_provisioned(localpart, device_id, false);
            return Err(err);
        }
        Ok(())
    }

    /// Synapse drops the device, which also ends its token there at once, whatever it cached.
    async fn device_ended(&self, localpart: &str, device_id: &str, now_ms: i64) -> DbResult<()> {
        self.link.set_provisioned(localpart, device_id, false);
        let job = device_job(OutboxKind::DeleteDevice, localpart, device_id);
        self.send(&[job], now_ms).await
    }

    async fn cross_signing_reset_allowed(&self, localpart: &str, now_ms: i64) -> DbResult<()> {
        let job = user_job(OutboxKind::AllowCrossSigningReset, localpart);
        self.send(&[job], now_ms).await
    }
}
