//! An in-process server over real HTTP on 127.0.0.1:0 for the rendezvous tests, its sessions
//! in memory or in PostgreSQL, and the helpers those tests share.

use std::sync::Arc;
use std::time::Duration;

use mxqr_server::rendezvous::store::{MemoryStore, PostgresStore, SessionLimits, Store};
use mxqr_server::{AppState, Config};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Backend, pg};

/// The stable MSC4388 prefix.
pub const STABLE: &str = "/_matrix/client/v1/rendezvous";
/// The unstable MSC4388 prefix.
pub const UNSTABLE: &str = "/_matrix/client/unstable/io.element.msc4388/rendezvous";
/// The MSC4108 prefix.
pub const MSC4108: &str = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";

/// One server instance; stop it with [`TestServer::stop`] to see its task end cleanly.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    pub client: Client,
    /// The PostgreSQL store, when the sessions live in PostgreSQL.
    pub store: Option<Arc<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Configuration for tests: no rate limits unless a test turns them on.
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
        protect_written_within: mxqr_server::rendezvous::store::PROTECT_WRITTEN_WITHIN,
    }
}

impl TestServer {
    /// Default test configuration, sessions in memory.
    pub async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    /// Default test configuration, sessions on `backend`.
    pub async fn start_on(backend: Backend) -> Self {
        let config = test_config();
        let limits = config.session_limits();
        Self::on(backend, config, limits).await
    }

    /// Sessions in memory with `config`'s limits.
    pub async fn with_config(config: Config) -> Self {
        let limits = config.session_limits();
        Self::with(config, limits).await
    }

    /// Sessions in memory with explicit `limits`.
    pub async fn with(config: Config, limits: SessionLimits) -> Self {
        Self::on(Backend::Sqlite, config, limits).await
    }

    /// Sessions on `backend`: in memory, or in a fresh PostgreSQL database of their own.
    pub async fn on(backend: Backend, config: Config, limits: SessionLimits) -> Self {
        match backend {
            Backend::Sqlite => Self::launch(config, limits, None).await,
            Backend::Postgres => {
                let (url, _) = pg::fresh_database().await;
                Self::postgres(&url, config, limits).await
            }
        }
    }

    /// Sessions in the PostgreSQL database `database_url`, which other instances may share.
    pub async fn postgres(database_url: &str, mut config: Config, limits: SessionLimits) -> Self {
        config.rendezvous.postgres_url = Some(database_url.to_owned());
        let store = PostgresStore::connect(database_url, 8, limits.clone())
            .await
            .unwrap();
        Self::launch(config, limits, Some(Arc::new(Store::Postgres(store)))).await
    }

    /// Sessions in `database_url` with the default test configuration.
    pub async fn postgres_default(database_url: &str) -> Self {
        let config = test_config();
        let limits = config.session_limits();
        Self::postgres(database_url, config, limits).await
    }

    async fn launch(mut config: Config, limits: SessionLimits, store: Option<Arc<Store>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.listen = addr;
        if config.public_url.is_none() {
            config.public_url = Some(format!("http://{addr}/"));
        }
        let memory = || Arc::new(Store::Memory(MemoryStore::new(limits)));
        let state = AppState::with_store(config, store.clone().unwrap_or_else(memory));
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

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Leaves the server running until the test binary exits; returns its base URL with a
    /// trailing slash (for tests that only need an address).
    pub fn detach(mut self) -> url::Url {
        // A dropped sender would end the server: forgetting it keeps the shutdown pending.
        if let Some(tx) = self.shutdown.take() {
            std::mem::forget(tx);
        }
        url::Url::parse(&format!("{}/", self.base)).unwrap()
    }

    /// Shuts the server down and checks that its task ended without an error.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// `POST <prefix>` with `{"data"}`; returns (id, token).
    pub async fn create(&self, prefix: &str, data: &str) -> (String, String) {
        let response = self
            .client
            .post(self.url(prefix))
            .json(&serde_json::json!({ "data": data }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["sequence_token"].as_str().unwrap().to_owned(),
        )
    }

    /// `PUT <prefix>/{id}` with `{"sequence_token","data"}`.
    pub async fn put(&self, prefix: &str, id: &str, token: &str, data: &str) -> Response {
        self.client
            .put(self.url(&format!("{prefix}/{id}")))
            .json(&serde_json::json!({ "sequence_token": token, "data": data }))
            .send()
            .await
            .unwrap()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}

/// Asserts a Matrix error response and returns its body.
pub async fn expect_error(response: Response, status: StatusCode, errcode: &str) -> Value {
    assert_eq!(response.status(), status, "status for {errcode}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], errcode, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

/// Value of a metric line with exactly these labels, e.g. `name{transport="msc4388"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
