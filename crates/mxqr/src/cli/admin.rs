//! `mxqr admin`: accounts and tokens, straight on the server's database. Safe while
//! `mxqr serve` runs (SQLite WAL with a busy timeout); takes the same `--config` and
//! `--data-dir` as `mxqr serve` so both find the same file.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mxqr_server::accounts::{DbError, Grant, OutboxJob, OutboxKind};
use mxqr_server::config::{CONFIG_ENV, Config, HomeserverMode, Overrides};
use mxqr_server::oauth::{OAuthState, password, scope};
use mxqr_server::synapse::user_job;

/// Manage accounts and mint tokens.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// TOML configuration file (as for `mxqr serve`).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory holding `mxqr.sqlite3` (as for `mxqr serve`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// `mxqr admin` subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Mint an access and a refresh token for a user's device (created if needed). Prints the
    /// access token on the first line and the refresh token on the second.
    IssueToken {
        /// Localpart of the user.
        localpart: String,
        /// Device the tokens are bound to.
        #[arg(long, value_name = "ID")]
        device_id: String,
        /// Print {access_token, refresh_token, user_id, device_id, expires_in} as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `mxqr admin user` subcommands.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a random password is generated and printed.
    Add {
        /// Localpart of the new user (`[a-z0-9._=/+-]`).
        localpart: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Display name to give the user in Synapse (synapse mode only: mxqr keeps no
        /// profile of its own).
        #[arg(long, value_name = "NAME")]
        display_name: Option<String>,
    },
    /// List users: Matrix ID and status, one per line.
    List,
    /// Lock a user: no sign-in, and all its sessions and tokens end.
    Lock {
        /// Localpart of the user.
        localpart: String,
    },
    /// Unlock a user.
    Unlock {
        /// Localpart of the user.
        localpart: String,
    },
    /// Set (or, without NAME, remove) a user's display name in Synapse (synapse mode only).
    SetDisplayName {
        /// Localpart of the user.
        localpart: String,
        /// The new display name.
        name: Option<String>,
    },
}

/// Why an admin command failed; `invalid` failures exit with the usage status.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Config(#[from] mxqr_server::ConfigError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Hash(#[from] password::HashError),
}

/// Runs an admin command.
pub fn run(args: AdminArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::from)
        .and_then(|rt| rt.block_on(execute(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ AdminError::Invalid(_)) | Err(err @ AdminError::Config(_)) => {
            super::fail(super::EXIT_INVALID_INPUT, err)
        }
        Err(err) => super::fail(super::EXIT_FAILURE, err),
    }
}

async fn execute(args: AdminArgs) -> Result<(), AdminError> {
    let file = args
        .config
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let overrides = Overrides {
        data_dir: args.data_dir,
        ..Overrides::default()
    };
    let config = Config::load(file.as_deref(), std::env::vars(), &overrides)?;
    mxqr_server::accounts::create_data_dir(&config.data_dir)?;
    let oauth = OAuthState::open(&config).await?;
    let db = oauth.db();
    match args.command {
        AdminCommand::User(UserCommand::Add {
            localpart,
            password_stdin,
            display_name,
        }) => {
            if let Some(name) = &display_name {
                synapse_only(&config, "--display-name")?;
                check_display_name(name)?;
            }
            if !password::valid_localpart(&localpart) {
                return Err(AdminError::Invalid(format!(
                    "invalid localpart {localpart:?}: use lowercase letters, digits and ._=-/+"
                )));
            }
            let (secret, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (hex::encode(rand::random::<[u8; 12]>()), true)
            };
            if secret.chars().count() < password::MIN_PASSWORD_LEN {
                return Err(AdminError::Invalid(format!(
                    "the password must have at least {} characters",
                    password::MIN_PASSWORD_LEN
                )));
            }
            let hashed = password::hash(&secret)?;
            match db
                .create_user(&localpart, Some(&hashed), oauth.now_ms())
                .await
            {
                Ok(()) => {}
                Err(DbError::Conflict) => {
                    return Err(AdminError::Invalid(format!(
                        "user {localpart:?} exists already"
                    )));
                }
                Err(err) => return Err(err.into()),
            }
            println!("created {}", oauth.user_id(&localpart));
            if generated {
                println!("password: {secret}");
            }
            if let Some(name) = display_name {
                let jobs = [
                    user_job(OutboxKind::ProvisionUser, &localpart),
                    display_name_job(&localpart, Some(name)),
                ];
                queue_for_synapse(&config, &oauth, &jobs).await?;
            }
        }
        AdminCommand::User(UserCommand::List) => {
            for user in db.users().await? {
                let status = if user.locked { "locked" } else { "active" };
                println!("{}\t{status}", oauth.user_id(&user.localpart));
            }
        }
        AdminCommand::User(UserCommand::Lock { localpart }) => {
            set_locked(&oauth, &localpart, true).await?;
            println!("locked {}", oauth.user_id(&localpart));
            // Synapse locks the account too, and drops its devices (none has a session now).
            let jobs = [
                user_job(OutboxKind::ProvisionUser, &localpart),
                user_job(OutboxKind::SyncDevices, &localpart),
            ];
            queue_for_synapse(&config, &oauth, &jobs).await?;
        }
        AdminCommand::User(UserCommand::Unlock { localpart }) => {
            set_locked(&oauth, &localpart, false).await?;
            println!("unlocked {}", oauth.user_id(&localpart));
            let jobs = [user_job(OutboxKind::ProvisionUser, &localpart)];
            queue_for_synapse(&config, &oauth, &jobs).await?;
        }
        AdminCommand::User(UserCommand::SetDisplayName { localpart, name }) => {
            synapse_only(&config, "set-display-name")?;
            if let Some(name) = &name {
                check_display_name(name)?;
            }
            if db.user(&localpart).await?.is_none() {
                return Err(AdminError::Invalid(format!("no user {localpart:?}")));
            }
            let jobs = [
                user_job(OutboxKind::ProvisionUser, &localpart),
                display_name_job(&localpart, name),
            ];
            queue_for_synapse(&config, &oauth, &jobs).await?;
        }
        AdminCommand::IssueToken {
            localpart,
            device_id,
            json,
        } => {
            let user = db
                .user(&localpart)
                .await?
                .ok_or_else(|| AdminError::Invalid(format!("no user {localpart:?}")))?;
            if user.locked {
                return Err(AdminError::Invalid(format!("user {localpart:?} is locked")));
            }
            let requested = scope::parse(&format!(
                "urn:matrix:client:api:* urn:matrix:client:device:{device_id}"
            ))
            .map_err(|e| AdminError::Invalid(format!("invalid device ID: {e}")))?;
            let grant = Grant {
                localpart: localpart.clone(),
                device_id: requested.device_id,
                client_id: None,
                scope: requested.granted,
            };
            let minted = oauth.mint();
            db.issue_session(&grant, &minted.stored, oauth.now_ms())
                .await?;
            if json {
                let value = serde_json::json!({
                    "access_token": minted.access_token,
                    "refresh_token": minted.refresh_token,
                    "user_id": oauth.user_id(&localpart),
                    "device_id": grant.device_id,
                    "expires_in": oauth.lifetimes().access_token.as_secs(),
                });
                println!("{value}");
            } else {
                println!("{}", minted.access_token);
                println!("{}", minted.refresh_token);
            }
        }
    }
    Ok(())
}

/// Refuses a command that only means something when Synapse holds the profiles.
fn synapse_only(config: &Config, what: &str) -> Result<(), AdminError> {
    if config.homeserver.mode == HomeserverMode::Synapse {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{what} needs homeserver.mode = \"synapse\": mxqr keeps no profile of its own"
        )))
    }
}

/// Synapse refuses (for good) display names it cannot store; say so now rather than have
/// the outbox drop the job later.
fn check_display_name(name: &str) -> Result<(), AdminError> {
    /// Synapse's limit (`MAX_DISPLAYNAME_LEN`).
    const MAX_CHARS: usize = 256;
    if name.trim().is_empty() {
        return Err(AdminError::Invalid(
            "the display name is empty (leave NAME out to remove it)".into(),
        ));
    }
    if name.chars().count() > MAX_CHARS {
        return Err(AdminError::Invalid(format!(
            "the display name is longer than {MAX_CHARS} characters"
        )));
    }
    Ok(())
}

fn display_name_job(localpart: &str, name: Option<String>) -> OutboxJob {
    OutboxJob {
        display_name: name,
        ..user_job(OutboxKind::SetDisplayName, localpart)
    }
}

/// In synapse mode, queues `jobs` in the outbox, which the running server sends to Synapse
/// (it looks at the queue every few seconds); in standalone mode there is nobody to tell.
async fn queue_for_synapse(
    config: &Config,
    oauth: &OAuthState,
    jobs: &[OutboxJob],
) -> Result<(), AdminError> {
    if config.homeserver.mode != HomeserverMode::Synapse {
        return Ok(());
    }
    oauth.db().outbox_push(jobs, oauth.now_ms()).await?;
    println!("queued for Synapse: {}", job_names(jobs));
    Ok(())
}

fn job_names(jobs: &[OutboxJob]) -> String {
    jobs.iter()
        .map(|j| j.kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn set_locked(oauth: &OAuthState, localpart: &str, locked: bool) -> Result<(), AdminError> {
    match oauth
        .db()
        .set_locked(localpart, locked, oauth.now_ms())
        .await
    {
        Err(DbError::NotFound) => Err(AdminError::Invalid(format!("no user {localpart:?}"))),
        other => Ok(other?),
    }
}
