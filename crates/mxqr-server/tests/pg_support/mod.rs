//! PostgreSQL for the `pg_*` tests: the server named by `MXQR_TEST_PG_URL` (set by
//! `scripts/test-all.sh`), else one this test binary starts with `scripts/pg-test-server.sh`
//! and which a watcher stops when the binary exits. Never skipped: no server is a failure.
//! Every test gets a database of its own, so session caps and counters do not interfere.
//! A test binary may hold several copies of this module (the `oauth_support` copy included by
//! every suite `pg_db` runs): they share the one server through files under its directory.

#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mxqr_server::store::{PostgresStore, SessionLimits};
use mxqr_server::{AppState, Config};
use reqwest::{Client, Response};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Environment variable naming a PostgreSQL server the tests may create databases on.
pub const PG_URL_ENV: &str = "MXQR_TEST_PG_URL";

/// URL of the server's maintenance database.
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => start_own_server(),
    })
}

fn start_own_server() -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/pg-test-server.sh"
    );
    let dir = std::env::temp_dir().join(format!("mxqr-pg-test-{}", std::process::id()));
    // The first copy of this module to take the lock starts the server; the others wait for
    // it and read its URL. The watcher removes the directory, lock and URL file included.
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("start.lock")).unwrap();
    lock.lock().unwrap();
    let url_file = dir.join("url");
    if let Ok(url) = std::fs::read_to_string(&url_file) {
        return url;
    }
    let output = Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(&dir)
        .arg("--watch")
        .arg(std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("{PG_URL_ENV} is unset and {script} cannot run: {e}"));
    assert!(
        output.status.success(),
        "{PG_URL_ENV} is unset and {script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let url = stdout
        .lines()
        .last()
        .filter(|l| l.starts_with("postgres://"))
        .unwrap_or_else(|| panic!("no URL from {script}: {stdout}"))
        .to_owned();
    std::fs::write(&url_file, &url).unwrap();
    url
}

/// A database of its own on the test server; returns (its URL, its name).
pub async fn fresh_database() -> (String, String) {
    let base = server_url();
    let name = format!("mxqr_t_{:016x}", rand_suffix());
    let mut admin = PgConnection::connect(base)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {base}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(base).unwrap();
    url.set_path(&format!("/{name}"));
    (url.to_string(), name)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Runs `sql` on the maintenance database (to break or restore a test database).
pub async fn admin(sql: &str) {
    let mut admin = PgConnection::connect(server_url()).await.unwrap();
    sqlx::query(sql).execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
}

/// Configuration for tests: no rate limits.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.rate_limit.enabled = false;
    config
}

/// Limits with a life of `ttl` (below the user-config floor on purpose).
pub fn limits(ttl: Duration) -> SessionLimits {
    SessionLimits {
        ttl,
        renew_on_write: false,
        max_lifetime: ttl,
        max_sessions: 10_000,
        max_total_bytes: 64 << 20,
        protect_written_within: mxqr_server::store::PROTECT_WRITTEN_WITHIN,
    }
}

/// One mxqr instance over real HTTP whose sessions live in PostgreSQL.
pub struct PgServer {
    pub base: String,
    pub client: Client,
    pub store: Arc<PostgresStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl PgServer {
    /// An instance on `database_url` with default limits.
    pub async fn start(database_url: &str) -> Self {
        let config = test_config();
        let limits = config.session_limits();
        Self::with(database_url, config, limits).await
    }

    pub async fn with(database_url: &str, mut config: Config, limits: SessionLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.listen = addr;
        config.public_url = Some(format!("http://{addr}/"));
        config.rendezvous.postgres_url = Some(database_url.to_owned());
        let store = Arc::new(
            PostgresStore::connect(database_url, 8, limits)
                .await
                .unwrap(),
        );
        let state = AppState::with_store(config, store.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(mxqr_server::serve(state, listener, async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            client: Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}
