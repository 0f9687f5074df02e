//! Process-level start-up for `mxqr serve`: logging, data directory, runtime, signals.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::app::serve;
use crate::config::Config;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {detail}")]
    LogFilter {
        /// Filter given.
        filter: String,
        /// Parser message.
        detail: String,
    },
    /// The data directory cannot be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The listening socket cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The accounts database cannot be opened.
    #[error("{0}")]
    Database(#[from] crate::accounts::DbError),
    /// Runtime or I/O failure while serving.
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Logs to stderr under the `RUST_LOG` filter when it is set, for servers embedded in another
/// command (`mxqr demo`), which otherwise log nothing. Keeps an already installed subscriber.
pub fn log_from_env() -> Result<(), ServeError> {
    match std::env::var("RUST_LOG") {
        // The embedding command's cookie jar (reqwest's `cookie_store`) logs every Set-Cookie
        // value, browser session tokens included, at debug level: always off.
        Ok(filter) => log_to_stderr(&filter, &["cookie_store=off"]),
        Err(_) => Ok(()),
    }
}

/// Logs to stderr under `filter` plus `directives`. A global subscriber may already exist
/// when embedded; the existing one is kept then.
fn log_to_stderr(filter: &str, directives: &[&str]) -> Result<(), ServeError> {
    let bad_filter = |e: &dyn std::fmt::Display| ServeError::LogFilter {
        filter: filter.to_owned(),
        detail: e.to_string(),
    };
    let mut env_filter = EnvFilter::try_new(filter).map_err(|e| bad_filter(&e))?;
    for directive in directives {
        env_filter = env_filter.add_directive(directive.parse().map_err(|e| bad_filter(&e))?);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// Runs the server until SIGINT or SIGTERM. Prints `listening on <addr>` on stdout once the
/// socket is bound (with `listen = "…:0"` that line tells the port).
pub fn run(config: Config) -> Result<(), ServeError> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.clone());
    log_to_stderr(&filter, &[])?;

    // Every connection costs a descriptor: use all the hard limit allows (the connection
    // budget is derived from the result).
    match crate::app::listener::raise_nofile_limit() {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }

    crate::accounts::create_data_dir(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener.local_addr()?;
        let mut config = config;
        let configured_name = config.configured_server_name();
        if config.public_url.is_none() {
            if bound.ip().is_unspecified() {
                tracing::warn!(
                    "listening on a wildcard address without public_url: MSC4108 session URLs \
                     will name {bound}, which clients cannot reach; set public_url"
                );
            }
            // `listen` may have asked for port 0: advertise the port actually bound.
            config.public_url = Some(format!("http://{bound}/"));
        }
        tracing::info!(%bound, public_url = %config.effective_public_url(), "mxqr serve started");
        // Open the database (and run its migrations) before announcing readiness, so that
        // whoever waits for the line can use the server, and admin commands at once.
        let state = crate::AppState::open(config, configured_name).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {bound}")?;
        stdout.flush()?;
        serve(state, listener, shutdown_signal()).await?;
        tracing::info!("mxqr serve stopped");
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
