//! `[homeserver]`: whether mxqr serves the client-server API itself or authenticates for a
//! Synapse.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::checks::is_http_url;

/// Who serves the client-server API for mxqr's accounts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HomeserverMode {
    /// mxqr serves the client-server subset itself.
    #[default]
    Standalone,
    /// Synapse serves the client-server API and asks mxqr about tokens
    /// (`matrix_authentication_service`); mxqr provisions users and devices in it.
    Synapse,
}

/// `[homeserver]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HomeserverConfig {
    /// `standalone` or `synapse`.
    pub mode: HomeserverMode,
    /// Base URL mxqr reaches Synapse's `/_synapse/mas/*` API at (synapse mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synapse_url: Option<String>,
    /// The secret shared with Synapse (its `matrix_authentication_service.secret`), inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// File holding the shared secret (surrounding whitespace ignored, as Synapse does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_path: Option<PathBuf>,
}

/// Shortest shared secret accepted: 256 bits when random, and anyone who reaches
/// introspection may try to guess it.
pub const MIN_SECRET_BYTES: usize = 32;

fn check_secret_length(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "homeserver: the shared secret has {} bytes, at least {MIN_SECRET_BYTES} are needed \
             (e.g. `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(())
}

impl HomeserverConfig {
    /// The shared secret, read from `secret_path` if that is where it is.
    pub fn load_secret(&self) -> Result<String, ConfigError> {
        let secret = match (&self.secret, &self.secret_path) {
            (Some(inline), None) => inline.trim().to_owned(),
            (None, Some(path)) => super::read_file(path)?.trim().to_owned(),
            _ => {
                return Err(ConfigError::Invalid(
                    "homeserver: exactly one of secret and secret_path must be set".into(),
                ));
            }
        };
        check_secret_length(&secret).map_err(ConfigError::Invalid)?;
        Ok(secret)
    }

    /// Synapse mode needs a Synapse URL and exactly one well-sized secret.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == HomeserverMode::Synapse {
            if !self.synapse_url.as_deref().is_some_and(is_http_url) {
                return Err(
                    "homeserver.synapse_url must be an absolute http(s) URL in synapse mode".into(),
                );
            }
            if self.secret.is_some() == self.secret_path.is_some() {
                return Err(
                    "homeserver: exactly one of secret and secret_path must be set in synapse mode"
                        .into(),
                );
            }
            if let Some(secret) = &self.secret {
                check_secret_length(secret.trim())?;
            }
        }
        Ok(())
    }
}
