//! The per-profile session store: `$MXQR_HOME`, else `$XDG_CONFIG_HOME/mxqr`, else
//! `~/.config/mxqr`, holding `profiles/<name>/session.json`. The file carries tokens, the
//! pickled device keys and the cross-signing and backup secrets, so it is written with mode
//! 0600 in 0700 directories, through a temporary file and a rename so a crash never leaves
//! half a session behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use mxqr_client::ClientError;
use mxqr_client::oauth::{self, AuthMetadata, Tokens};
use mxqr_keys::Account;
use mxqr_proto::messages::SecretsMessage;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

/// Why a profile could not be used; every message is meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no home directory: set MXQR_HOME, XDG_CONFIG_HOME or HOME")]
    NoHome,
    #[error("`{0}` is not a valid profile name (use letters, digits, `.`, `_` and `-`)")]
    BadName(String),
    #[error("profile `{0}` does not exist; create it with `mxqr login` or `mxqr account`")]
    Missing(String),
    #[error("profile `{0}` is not signed in; sign in with `mxqr login` or `mxqr account`")]
    SignedOut(String),
    #[error("profile `{name}` is unreadable ({path}): {reason}")]
    Corrupt {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one profile remembers about one device.
#[derive(Default, Serialize, Deserialize)]
pub struct Session {
    pub homeserver: Option<Url>,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    /// The OAuth client the tokens belong to; without it they cannot be refreshed or revoked.
    pub client_id: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// The vodozemac account pickle (the device's identity and one-time keys).
    pub account: Option<serde_json::Value>,
    /// Cross-signing private keys and backup key: what this device hands to a new one.
    pub secrets: Option<SecretsMessage>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("homeserver", &self.homeserver.as_ref().map(Url::as_str))
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn account(&self) -> Result<Option<Account>, String> {
        match &self.account {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(|p| Some(Account::from_pickle(p)))
                .map_err(|e| format!("stored device keys: {e}")),
        }
    }

    pub fn set_account(&mut self, account: &Account) -> Result<(), String> {
        self.account = Some(
            serde_json::to_value(account.pickle())
                .map_err(|e| format!("saving device keys: {e}"))?,
        );
        Ok(())
    }

    pub fn set_tokens(&mut self, tokens: &Tokens) {
        self.access_token = Some(tokens.access_token.clone());
        // A refresh answer may omit the refresh token: the old one then stays valid.
        if tokens.refresh_token.is_some() {
            self.refresh_token = tokens.refresh_token.clone();
        }
    }
}

/// One named profile on disk.
pub struct Profile {
    pub name: String,
    dir: PathBuf,
}

/// The store's root directory, from the environment alone.
pub fn root() -> Result<PathBuf, ProfileError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = env("MXQR_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = env("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(xdg).join("mxqr"));
    }
    env("HOME")
        .map(|h| PathBuf::from(h).join(".config").join("mxqr"))
        .ok_or(ProfileError::NoHome)
}

impl Profile {
    pub fn open(name: &str) -> Result<Self, ProfileError> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(ProfileError::BadName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            dir: root()?.join("profiles").join(name),
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// The stored session, or `None` if the profile was never saved.
    pub fn load_opt(&self) -> Result<Option<Session>, ProfileError> {
        let path = self.file();
        // Holds tokens and private keys: wiped once parsed.
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ProfileError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProfileError::Corrupt {
                name: self.name.clone(),
                path,
                reason: e.to_string(),
            })
    }

    pub fn load(&self) -> Result<Session, ProfileError> {
        self.load_opt()?
            .ok_or_else(|| ProfileError::Missing(self.name.clone()))
    }

    pub fn save(&self, session: &Session) -> Result<(), ProfileError> {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProfileError::Write { path, source }
        };
        create_private_dir(&self.dir).map_err(write_err(&self.dir))?;
        let json = serialise(session).map_err(|e| ProfileError::Write {
            path: self.file(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self.dir.join(".session.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(write_err(&tmp))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, self.file()).map_err(write_err(&self.file()))
    }

    /// Removes the profile and everything in it.
    pub fn remove(&self) -> Result<(), ProfileError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ProfileError::Write {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}

/// The session as written to disk, in a buffer wiped when dropped (it holds tokens and private
/// keys). The buffer is sized exactly before the second pass fills it, so it never grows:
/// growing would free the bytes written so far without wiping them.
fn serialise(session: &Session) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    let mut length = ByteCount(0);
    serde_json::to_writer_pretty(&mut length, session)?;
    let mut buffer = Zeroizing::new(Vec::with_capacity(length.0));
    serde_json::to_writer_pretty(&mut *buffer, session)?;
    Ok(buffer)
}

/// A writer that only counts.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Creates `dir` and its parents with mode 0700 (existing directories are left as they are).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A signed-in profile ready for requests: its homeserver and current access token.
pub struct SignedIn {
    pub profile: Profile,
    pub session: Session,
    pub homeserver: Url,
    pub access_token: String,
}

impl SignedIn {
    pub fn load(name: &str) -> Result<Self, ProfileError> {
        let profile = Profile::open(name)?;
        let session = profile.load()?;
        let (Some(homeserver), Some(access_token)) =
            (session.homeserver.clone(), session.access_token.clone())
        else {
            return Err(ProfileError::SignedOut(profile.name.clone()));
        };
        Ok(Self {
            profile,
            session,
            homeserver,
            access_token,
        })
    }

    /// Runs `request` with the access token; if the server says the token is unknown (it
    /// expired) and the profile holds a refresh token, rotates the pair, saves it, and runs
    /// `request` once more.
    pub async fn with_refresh<T, F, Fut>(
        &mut self,
        http: &reqwest::Client,
        request: F,
    ) -> Result<T, String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        match request(self.access_token.clone()).await {
            Err(e) if is_unknown_token(&e) => {
                self.refresh(http).await?;
                request(self.access_token.clone())
                    .await
                    .map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Rotates the token pair with the refresh token and saves it.
    pub async fn refresh(&mut self, http: &reqwest::Client) -> Result<(), String> {
        let (Some(client_id), Some(refresh_token)) = (
            self.session.client_id.clone(),
            self.session.refresh_token.clone(),
        ) else {
            return Err(format!(
                "the access token of profile `{}` expired and it has no refresh token; sign in again",
                self.profile.name
            ));
        };
        let metadata = AuthMetadata::discover(http, &self.homeserver)
            .await
            .map_err(|e| format!("refreshing the access token: {e}"))?;
        let tokens = oauth::refresh(http, &metadata, &client_id, &refresh_token)
            .await
            .map_err(|e| format!("refreshing the access token: {e}"))?;
        self.session.set_tokens(&tokens);
        self.access_token = tokens.access_token.clone();
        self.profile.save(&self.session).map_err(|e| e.to_string())
    }
}

/// `401 M_UNKNOWN_TOKEN`: the token expired or was revoked.
pub fn is_unknown_token(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, errcode, .. }
        if *status == StatusCode::UNAUTHORIZED && errcode.as_deref() == Some("M_UNKNOWN_TOKEN"))
}

impl From<ProfileError> for super::CliError {
    /// A bad profile name is bad usage; everything else is a failure of the store.
    fn from(e: ProfileError) -> Self {
        match e {
            ProfileError::BadName(_) => super::CliError::Usage(e.to_string()),
            _ => super::CliError::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use mxqr_proto::messages::{BackupSecrets, CrossSigningSecrets, Secret};

    use super::*;

    fn session() -> Session {
        let secret = || Secret::new("c2VjcmV0IHNlZWQgYnl0ZXMgdGhhdCBhcmUgMzIgYnl0ZXM");
        let mut account = Session::default();
        account.set_account(&Account::new()).unwrap();
        Session {
            access_token: Some("mat_".repeat(100)),
            refresh_token: Some("mar_".repeat(100)),
            secrets: Some(SecretsMessage {
                cross_signing: CrossSigningSecrets {
                    master_key: secret(),
                    self_signing_key: secret(),
                    user_signing_key: secret(),
                },
                backup: Some(BackupSecrets {
                    algorithm: mxqr_keys::BACKUP_ALGORITHM.into(),
                    key: secret(),
                    backup_version: "1".into(),
                }),
            }),
            ..account
        }
    }

    #[test]
    fn the_written_bytes_are_in_one_wiped_buffer_that_never_grew() {
        let session = session();
        let bytes: Zeroizing<Vec<u8>> = serialise(&session).unwrap();
        // A buffer that grew would have left copies of its earlier contents, unwiped, in
        // freed memory; one sized to the byte leaves none.
        assert_eq!(bytes.capacity(), bytes.len());
        let back: Session = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.access_token, session.access_token);
        assert_eq!(back.secrets, session.secrets);
        assert_eq!(back.account, session.account);
    }
}
