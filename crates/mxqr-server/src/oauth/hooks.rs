//! What the homeserver must hear about sessions. In synapse mode the device list lives in
//! Synapse too, so the OAuth server tells it through [`HomeserverHooks`] (implemented by
//! `crate::synapse`), without knowing who listens; standalone, mxqr is the homeserver and
//! [`Standalone`] keeps the defaults, which do nothing.

use crate::accounts::DbResult;

/// Side effects a session's life has on the homeserver. Each call returns once the
/// homeserver has the news or it is safely queued; a store failure is returned.
#[async_trait::async_trait]
pub trait HomeserverHooks: Send + Sync + 'static {
    /// Whether any homeserver listens; `false` spares the lookups that only feed the hooks.
    fn active(&self) -> bool {
        false
    }

    /// A session's first tokens are about to go out: the user and the device must exist
    /// there first. `display_name` names a new device after its client.
    async fn session_started(
        &self,
        _localpart: &str,
        _device_id: &str,
        _display_name: Option<String>,
        _now_ms: i64,
    ) -> DbResult<()> {
        Ok(())
    }

    /// A device's session ended: the homeserver drops the device (and so its tokens).
    async fn device_ended(&self, _localpart: &str, _device_id: &str, _now_ms: i64) -> DbResult<()> {
        Ok(())
    }

    /// The account page approved a cross-signing reset, which the homeserver checks itself.
    async fn cross_signing_reset_allowed(&self, _localpart: &str, _now_ms: i64) -> DbResult<()> {
        Ok(())
    }
}

/// Standalone mode: mxqr serves the client-server API itself, nobody else is told.
#[derive(Debug, Default)]
pub struct Standalone;

impl HomeserverHooks for Standalone {}
