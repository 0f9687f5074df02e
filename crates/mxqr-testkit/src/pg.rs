//! The PostgreSQL test server: the one named by `MXQR_TEST_PG_URL` (set by
//! `scripts/test-all.sh`), else one this test binary starts with `scripts/pg-test-server.sh`
//! and which a watcher stops when the binary exits. Never skipped: no server is a failure.
//! Every test gets a database of its own, so session caps and counters do not interfere.

use std::process::Command;
use std::sync::OnceLock;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

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
    // The first test to take the lock starts the server; the others wait for it and read its
    // URL. The watcher removes the directory, lock and URL file included.
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
