//! An in-process server with accounts and OAuth over real HTTP on 127.0.0.1:0 and a manual
//! clock, its accounts on either [`Backend`]; and the scripted person who uses it: HTTP clients
//! acting as a browser, the login form, PKCE, and reading the pages' forms.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use mxqr_server::accounts::SqlDb;
use mxqr_server::oauth::{Clock, OAuthState, Standalone, SystemClock, password, tokens};
use mxqr_server::{AppState, Config};

use crate::{Backend, pg};
use reqwest::redirect::Policy;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The password of every user [`OAuthServer::add_user`] creates.
pub const PASSWORD: &str = "correct horse battery";
/// The device authorization grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A clock that starts at the system time and moves only when told.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl Default for ManualClock {
    fn default() -> Self {
        Self(AtomicI64::new(SystemClock.now_ms()))
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A running server; dropping it shuts it down and removes its data directory.
pub struct OAuthServer {
    pub base: String,
    pub http: Client,
    pub clock: Arc<ManualClock>,
    pub oauth: OAuthState,
    /// Name of the server's PostgreSQL database (to break it in outage tests).
    pub pg_database: Option<String>,
    dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a test changes in the server's configuration.
pub struct Options {
    pub registration: bool,
    pub rate_limit: bool,
    pub max_lookups: u32,
    /// Pending device grants per client (`None`: the configured default).
    pub device_grants_per_client: Option<u32>,
    /// `public_url` instead of `http://<listen address>/` (e.g. https, for cookie rules).
    pub public_url: Option<String>,
    /// Take the client address from `x-forwarded-for` (tests acting as many addresses).
    pub forwarded_for: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            registration: false,
            rate_limit: false,
            max_lookups: 5,
            device_grants_per_client: None,
            public_url: None,
            forwarded_for: false,
        }
    }
}

/// An API client whose requests come from `source` (any 127.0.0.0/8 address), to act as
/// another client address.
pub fn api_client_from(source: std::net::IpAddr) -> Client {
    Client::builder()
        .redirect(Policy::none())
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client that neither follows redirects nor keeps cookies (API calls).
pub fn api_client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A browser: keeps cookies, does not follow redirects (tests look at each hop).
pub fn browser() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl OAuthServer {
    /// A server on `backend` with the default [`Options`].
    pub async fn start(backend: Backend) -> Self {
        Self::with(backend, Options::default()).await
    }

    /// A server on `backend` with `options`.
    pub async fn with(backend: Backend, options: Options) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "mxqr-oauth-test-{}-{n}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            listen: addr,
            data_dir: dir.clone(),
            public_url: Some(
                options
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}/")),
            ),
            server_name: Some("example.test".into()),
            ..Config::default()
        };
        config.rate_limit.enabled = options.rate_limit;
        if options.forwarded_for {
            config.rate_limit.client_ip_header = Some("x-forwarded-for".into());
        }
        config.oauth.registration_enabled = options.registration;
        config.oauth.failed_attempts_max = 5;
        config.oauth.user_code_max_lookups = options.max_lookups;
        if let Some(n) = options.device_grants_per_client {
            config.oauth.device_grants_pending_per_client = n;
        }
        let mut pg_database = None;
        if backend == Backend::Postgres {
            let (url, name) = pg::fresh_database().await;
            config.database.url = Some(url);
            pg_database = Some(name);
        }
        // The selection `mxqr serve` uses: `database.url` picks PostgreSQL.
        let db = mxqr_server::accounts::open(&config).await.unwrap();
        let clock = Arc::new(ManualClock::default());
        let oauth = OAuthState::new(&config, db, Arc::new(Standalone), clock.clone());
        let state = AppState::new(config).with_oauth(oauth.clone());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(mxqr_server::serve(state, listener, async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            http: api_client(),
            clock,
            oauth,
            pg_database,
            dir,
            shutdown: Some(tx),
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The accounts store, to set a scene or check what a request left behind.
    pub fn db(&self) -> &SqlDb {
        self.oauth.db()
    }

    /// Creates user `localpart` with [`PASSWORD`].
    pub async fn add_user(&self, localpart: &str) {
        let hash = password::hash(PASSWORD).unwrap();
        self.db()
            .create_user(localpart, Some(&hash), self.oauth.now_ms())
            .await
            .unwrap();
    }

    /// `POST /oauth2/registration` with `metadata`.
    pub async fn register(&self, metadata: Value) -> Response {
        self.http
            .post(self.url("/oauth2/registration"))
            .json(&metadata)
            .send()
            .await
            .unwrap()
    }

    /// Registers a native client with a loopback and a private-use redirect URI and all grants.
    pub async fn native_client(&self) -> String {
        let response = self
            .register(json!({
                "client_name": "Test App",
                "client_uri": "https://app.example.com/",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback", "com.example.app:/callback"],
                "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["client_id"].as_str().unwrap().to_owned()
    }

    /// `POST /oauth2/token` with `form`; returns status and JSON body.
    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/oauth2/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Whether an access token is accepted by the bearer lookup.
    pub async fn token_valid(&self, access_token: &str) -> bool {
        self.oauth.token_info(access_token).await.unwrap().is_some()
    }

    /// Signs `browser` in through the login form.
    pub async fn login(&self, browser: &Client, localpart: &str) -> Response {
        let page = browser.get(self.url("/login")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let csrf = hidden(&html, "csrf");
        browser
            .post(self.url("/login"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", localpart),
                ("password", PASSWORD),
                ("next", "/account"),
            ])
            .send()
            .await
            .unwrap()
    }
}

/// The stable scopes of a session for `device_id`.
pub fn scope(device_id: &str) -> String {
    format!("urn:matrix:client:api:* urn:matrix:client:device:{device_id}")
}

/// The MSC2967 unstable scopes of a session for `device_id`.
pub fn unstable_scope(device_id: &str) -> String {
    format!(
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:{device_id}"
    )
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = format!("v{}", hex::encode(rand::random::<[u8; 32]>()));
    let challenge = tokens::s256(&verifier);
    (verifier, challenge)
}

/// The `value` of the first `<input … name="NAME" value="…">` in `html`.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no input {name} in page:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end]
        .replace("&amp;", "&")
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// Every hidden input of the first form posting to `action`, as name/value pairs.
pub fn form_fields(html: &str, action: &str) -> Vec<(String, String)> {
    let start = html
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form for {action} in page:\n{html}"));
    let end = html[start..].find("</form>").unwrap() + start;
    let form = &html[start..end];
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + "<input type=\"hidden\" name=\"".len()..];
        let name_end = rest.find('"').unwrap();
        let name = rest[..name_end].to_owned();
        let value = hidden(&format!("name=\"{name}\" {}", &rest[name_end + 2..]), &name);
        fields.push((name, value));
    }
    fields
}

/// The `Location` header of a redirect.
pub fn location(response: &Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Query (or fragment) parameters of a redirect URI.
pub fn redirect_params(
    location: &str,
    fragment: bool,
) -> std::collections::HashMap<String, String> {
    let url = url::Url::parse(location).unwrap();
    let part = if fragment {
        url.fragment().unwrap_or("").to_owned()
    } else {
        url.query().unwrap_or("").to_owned()
    };
    url::form_urlencoded::parse(part.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
