//! What every server-rendered page shares: templates, page errors, the browser session and
//! its CSRF tokens, and the sign-in and registration pages themselves. The pages of each flow
//! live with the flow: consent in [`crate::auth_code`], `/link` in [`crate::device_grant`],
//! the account pages in [`crate::account_pages`].
//!
//! Every form carries a CSRF token: an HMAC of a nonce cookie keyed with the browser session
//! (see [`form_token`]), so a token is worth nothing in another browser or session, even one
//! an attacker planted the nonce in. Before signing in there is no session to bind to and the
//! token is a plain double submit of the nonce; under an https public URL the cookies are
//! `__Host-` cookies, which a sibling subdomain or a plain-http page cannot set, so the nonce
//! cannot be planted either. Pages load nothing external and forbid framing through the
//! Content-Security-Policy.

mod login;

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::accounts::DbError;
use crate::error::with_retry_after;
use crate::oauth::endpoints::Params;
use crate::oauth::{OAuthState, tokens};

/// The (browser session, CSRF nonce) cookie names on this server. Under an https public URL
/// they are `__Host-` cookies: browsers accept those only when Secure, with `Path=/` and no
/// `Domain`, so no other host can set or shadow them.
fn cookie_names(state: &OAuthState) -> (&'static str, &'static str) {
    if state.secure_cookies() {
        ("__Host-mxqr_session", "__Host-mxqr_csrf")
    } else {
        ("mxqr_session", "mxqr_csrf")
    }
}

/// The CSRF token of forms shown to the browser holding `nonce` and, once signed in, the
/// session token `session`: HMAC-SHA256 keyed with the session token, over the nonce.
///
/// The key is the browser session's secret, which the server checks against its store on
/// every request and which an attacker cannot read (HttpOnly) or guess, so knowing or
/// planting the nonce does not give a valid token. Being derived from the session rather
/// than a per-process key, tokens stay valid across restarts and between instances that
/// share the database.
fn form_token(nonce: &str, session: Option<&str>) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let key = session.unwrap_or_default().as_bytes();
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(b"mxqr csrf v1\0");
    mac.update(nonce.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

const CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("message.html", include_str!("templates/message.html")),
        ("login.html", include_str!("templates/login.html")),
        ("register.html", include_str!("templates/register.html")),
        ("consent.html", include_str!("templates/consent.html")),
        ("link.html", include_str!("templates/link.html")),
        (
            "device_consent.html",
            include_str!("templates/device_consent.html"),
        ),
        ("account.html", include_str!("templates/account.html")),
        ("device.html", include_str!("templates/device.html")),
        ("reset.html", include_str!("templates/reset.html")),
    ] {
        // The templates are part of the binary and covered by tests: a syntax error is a
        // build-time mistake, reported when the page is rendered.
        if let Err(err) = env.add_template(name, source) {
            tracing::error!(%err, name, "template does not parse");
        }
    }
    env
});

/// Why a page request failed; rendered as an HTML page at one place ([`IntoResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The request cannot be served as made (shown to the person).
    #[error("{0}")]
    BadRequest(String),
    /// The CSRF token is missing or wrong.
    #[error("the form expired or was not sent from this site; reload the page and try again")]
    Csrf,
    /// Nothing here.
    #[error("{0}")]
    NotFound(String),
    /// The page exists, but not for this method.
    #[error("this page cannot be requested this way")]
    MethodNotAllowed,
    /// The form is larger than any form of ours.
    #[error("the form is too large")]
    TooLarge,
    /// Too many attempts from this address.
    #[error("too many attempts; wait a minute and try again")]
    RateLimited(Duration),
    /// The store failed.
    #[error("the service is temporarily unavailable; try again shortly")]
    Unavailable(#[from] DbError),
    /// A template failed to render.
    #[error("the page could not be displayed; try again shortly")]
    Render(#[from] minijinja::Error),
    /// Not an error page: the answer is this redirect, to sign in first or (once the client's
    /// redirect URI is verified) an error response back to the client.
    #[error("redirected")]
    Redirect(Box<Response>),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Redirect(redirect) => return *redirect,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Render(_) => {
                tracing::error!(err = ?self, "page failure");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let context = minijinja::context! {
            title => "Something went wrong",
            message => self.to_string(),
            error => true,
            server_name => "",
        };
        let body = TEMPLATES
            .get_template("message.html")
            .and_then(|t| t.render(context))
            .unwrap_or_else(|_| "<!DOCTYPE html><title>Error</title><p>Error</p>".to_owned());
        let retry_after = match self {
            Self::RateLimited(wait) => Some(wait.as_secs().max(1)),
            _ => None,
        };
        with_retry_after(html(status, body), retry_after)
    }
}

/// Result of a page handler.
pub type PageResult = Result<Response, PageError>;

/// An HTML response with the page security headers.
fn html(status: StatusCode, body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    (status, headers, body).into_response()
}

/// Lets the forms of `response` end in a redirect to `redirect_uri`: browsers apply
/// `form-action` to every redirect after a form post, so the consent page's answer could not
/// reach the client's redirect URI otherwise.
pub(crate) fn allow_form_redirect(response: &mut Response, redirect_uri: &str) {
    let Ok(url) = url::Url::parse(redirect_uri) else {
        return;
    };
    // An origin or a scheme serialization holds no spaces, quotes or semicolons.
    let source = match url.scheme() {
        "http" | "https" => url.origin().ascii_serialization(),
        scheme => format!("{scheme}:"),
    };
    let csp = CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {source}"),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// A `303 See Other` to `location`.
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, `Path=/` and never a `Domain`, plus Secure
/// under https (which the `__Host-` names require).
fn set_cookie(
    state: &OAuthState,
    name: &str,
    value: &str,
    max_age: Option<Duration>,
) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if state.secure_cookies() {
        text.push_str("; Secure");
    }
    // Values are base62 tokens: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// What a page needs from the request: the CSRF nonce (created if missing), the form token
/// bound to it and the session, and the signed-in user; with the state it renders with.
pub(crate) struct Visit {
    state: OAuthState,
    /// The nonce this visit created, none having come with the request: it is set as the
    /// cookie, and no form can have been sent with it yet.
    new_nonce: Option<String>,
    /// The form token ([`form_token`]) forms of this visit carry.
    csrf: String,
    pub(crate) localpart: Option<String>,
}

impl FromRequestParts<OAuthState> for Visit {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &OAuthState) -> Result<Self, PageError> {
        Self::of(state, &parts.headers).await
    }
}

impl Visit {
    async fn of(state: &OAuthState, headers: &HeaderMap) -> Result<Self, PageError> {
        let (session_cookie, csrf_cookie) = cookie_names(state);
        let existing = cookie(headers, csrf_cookie)
            .filter(|v| v.len() == 43 && v.bytes().all(|b| b.is_ascii_alphanumeric()));
        let new_nonce = existing.is_none().then(tokens::csrf_token);
        let nonce = existing.or(new_nonce.as_deref()).unwrap_or_default();
        let session = cookie(headers, session_cookie)
            .filter(|token| tokens::well_formed(tokens::Kind::BrowserSession, token));
        let localpart = match session {
            Some(token) => {
                state
                    .db()
                    .browser_session_user(&tokens::hash(token), state.now_ms())
                    .await?
            }
            None => None,
        };
        Ok(Self {
            state: state.clone(),
            csrf: form_token(nonce, session),
            new_nonce,
            localpart,
        })
    }

    /// Checks the form's `csrf` field against the token of this nonce and session, in
    /// constant time.
    fn check_csrf(&self, submitted: Option<&str>) -> Result<(), PageError> {
        // A nonce created just now cannot be in any form yet.
        let known = self.new_nonce.is_none();
        match submitted {
            Some(s) if known && bool::from(s.as_bytes().ct_eq(self.csrf.as_bytes())) => Ok(()),
            _ => Err(PageError::Csrf),
        }
    }

    /// Renders `template` with the common context (CSRF token, user, server name).
    pub(crate) fn render(
        &self,
        status: StatusCode,
        template: &str,
        context: impl Serialize,
    ) -> PageResult {
        let state = &self.state;
        let common = minijinja::context! {
            csrf => &self.csrf,
            server_name => state.server_name(),
            user_id => self.localpart.as_deref().map(|l| state.user_id(l)),
            registration_enabled => state.registration_enabled(),
        };
        let body = TEMPLATES.get_template(template)?.render(
            minijinja::context! { ..minijinja::Value::from_serialize(&context), ..common },
        )?;
        let mut response = html(status, body);
        self.finish(&mut response);
        Ok(response)
    }

    /// Adds the CSRF nonce cookie when this visit created the nonce.
    pub(crate) fn finish(&self, response: &mut Response) {
        if let Some(nonce) = &self.new_nonce {
            let name = cookie_names(&self.state).1;
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&self.state, name, nonce, None),
            );
        }
    }

    /// A redirect to the sign-in or registration `page`, returning to `next` afterwards.
    pub(crate) fn redirect_to_form(&self, page: &str, next: &str) -> Response {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish();
        let mut response = see_other(&format!("{page}?{query}"));
        self.finish(&mut response);
        response
    }

    /// The signed-in user; when there is none, [`PageError::Redirect`] to sign in, which comes
    /// back to `path` (with `query`, if any) afterwards.
    pub(crate) fn user(&self, path: &str, query: Option<&str>) -> Result<String, PageError> {
        if let Some(localpart) = &self.localpart {
            return Ok(localpart.clone());
        }
        let next = match query.filter(|q| !q.is_empty()) {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let redirect = self.redirect_to_form("/login", &next);
        Err(PageError::Redirect(Box::new(redirect)))
    }

    /// The signed-in user's device of this ID, as the consent pages describe it, when it
    /// exists: the scope then signs the application in as that device (with its keys and
    /// messages), which the person must be told before approving.
    pub(crate) async fn existing_device(
        &self,
        device_id: &str,
    ) -> Result<Option<minijinja::Value>, PageError> {
        let Some(localpart) = &self.localpart else {
            return Ok(None);
        };
        let device = self.state.db().device(localpart, device_id).await?;
        Ok(device.map(|device| {
            minijinja::context! {
                display_name => device.display_name,
                added => show_time(device.created_at),
                signed_in => device.session_created_at.is_some(),
            }
        }))
    }
}

/// Query-string parameters (same rules as form bodies: no repeated parameters).
pub(crate) fn query_params(raw: Option<&str>) -> Result<Params, PageError> {
    Params::parse(raw.unwrap_or_default().as_bytes()).map_err(PageError::BadRequest)
}

/// Pages a sign-in may return to: the consent page, `/link` and the account page.
const NEXT_PATHS: [&str; 3] = ["/oauth2/authorize", "/link", "/account"];

/// Where to go after signing in or registering: `next` when it is one of [`NEXT_PATHS`]
/// (plus any query), else `/account`.
///
/// Browsers strip tabs and newlines from URLs and read `\` as `/`, so `/\t/evil.example`
/// is another site to them: rather than listing tricks, `next` must be an exact path from a
/// fixed set followed by a query of plain URL characters (percent escapes allowed, which a
/// query cannot turn into another origin). Such a value is always a valid `Location`.
fn safe_next(next: Option<&str>) -> String {
    next.filter(|n| {
        let (path, query) = n.split_once('?').unwrap_or((n, ""));
        NEXT_PATHS.contains(&path) && query.bytes().all(query_byte)
    })
    .unwrap_or("/account")
    .to_owned()
}

/// A byte that may stand unescaped in a URL query (RFC 3986 `query`, with `%` for escapes).
fn query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A time for people: `Mon, 23 Nov 2026 08:00:00 GMT`.
pub(crate) fn show_time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A form submission: its visit and its fields, once the form's `csrf` field checks out. A
/// body over the limit is an HTML page, not axum's plain-text rejection.
pub(crate) struct PageForm {
    pub(crate) visit: Visit,
    pub(crate) params: Params,
}

impl FromRequest<OAuthState> for PageForm {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &OAuthState) -> Result<Self, PageError> {
        let headers = req.headers().clone();
        let body = match Bytes::from_request(req, state).await {
            Ok(body) => body,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(PageError::TooLarge);
            }
            Err(_) => return Err(PageError::BadRequest("the form could not be read".into())),
        };
        let visit = Visit::of(state, &headers).await?;
        let params = Params::parse(&body).map_err(PageError::BadRequest)?;
        visit.check_csrf(params.get("csrf"))?;
        Ok(Self { visit, params })
    }
}

/// Whether `path` is one of the pages (so the router's 405 answers in HTML there).
pub fn is_page(path: &str) -> bool {
    matches!(
        path,
        "/login"
            | "/register"
            | "/logout"
            | "/oauth2/authorize"
            | "/link"
            | "/account"
            | "/account/device/delete"
            | "/account/cross-signing-reset"
    )
}

/// Routes of the sign-in pages; the flows add their own pages (keep [`is_page`] in step).
pub(crate) fn routes() -> Router<OAuthState> {
    Router::new()
        .route("/login", get(login::login_page).post(login::login_submit))
        .route(
            "/register",
            get(login::register_page).post(login::register_submit),
        )
        .route("/logout", post(login::logout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_own_pages() {
        for good in [
            "/link?code=X",
            "/link",
            "/account",
            "/oauth2/authorize?client_id=a&scope=urn%3Ax%20y",
        ] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/"),
            Some("/\\evil"),
            Some("/\t/evil.example"),
            Some("/%09/evil.example"),
            Some("/link/../x"),
            Some("/link?x=\n"),
            Some("/link?x=\\"),
            Some("/link#x"),
            Some("/login"),
            Some(""),
        ] {
            assert_eq!(safe_next(bad), "/account", "{bad:?}");
        }
    }

    #[test]
    fn every_template_parses() {
        for name in [
            "message.html",
            "login.html",
            "register.html",
            "consent.html",
            "link.html",
            "device_consent.html",
            "account.html",
            "device.html",
            "reset.html",
        ] {
            let template = TEMPLATES.get_template(name).unwrap();
            template
                .render(minijinja::context! { csrf => "t", server_name => "s" })
                .unwrap();
        }
    }

    #[test]
    fn form_action_admits_only_the_redirect_target() {
        for (uri, expected) in [
            (
                "http://127.0.0.1:4711/callback?x=1",
                "form-action 'self' http://127.0.0.1:4711;",
            ),
            (
                "https://app.example.com/cb",
                "form-action 'self' https://app.example.com;",
            ),
            (
                "com.example.app:/callback",
                "form-action 'self' com.example.app:;",
            ),
        ] {
            let mut response = html(StatusCode::OK, String::new());
            allow_form_redirect(&mut response, uri);
            let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains(expected), "{uri}: {csp}");
            assert!(csp.contains("frame-ancestors 'none'"));
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mxqr_csrf=abc; b=2"),
        );
        assert_eq!(cookie(&headers, "mxqr_csrf"), Some("abc"));
        assert_eq!(cookie(&headers, "mxqr_session"), None);
    }
}
