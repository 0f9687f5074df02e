//! Sign-in, self-registration and sign-out.

use super::{
    PageError, PageForm, PageResult, Visit, cookie_names, safe_next, see_other, set_cookie,
};
use crate::accounts::DbError;
use crate::client_ip::ClientIp;
use crate::error::with_retry_after;
use crate::oauth::{OAuthState, ms, password, tokens};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use std::time::Duration;

/// The sign-in or the registration form, with where it leads afterwards and the username
/// typed so far: its GET shows it, and a refused POST shows it again.
struct Form<'a> {
    template: &'static str,
    title: &'static str,
    next: &'a str,
    username: &'a str,
}

impl Form<'_> {
    fn login<'a>(next: &'a str, username: &'a str) -> Form<'a> {
        Form {
            template: "login.html",
            title: "Sign in",
            next,
            username,
        }
    }

    fn register<'a>(next: &'a str, username: &'a str) -> Form<'a> {
        Form {
            template: "register.html",
            title: "Create account",
            next,
            username,
        }
    }

    /// The form, below `error` when there is one.
    fn render(&self, visit: &Visit, status: StatusCode, error: Option<&str>) -> PageResult {
        let context = minijinja::context! {
            title => self.title, next => self.next, username => self.username, error => error,
        };
        visit.render(status, self.template, context)
    }

    /// The form again, refusing the attempt for `wait`: 429 with `Retry-After`.
    fn too_many_attempts(&self, visit: &Visit, wait: Duration) -> PageResult {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let plural = if secs == 1 { "" } else { "s" };
        let error = format!("Too many attempts: try again in {secs} second{plural}.");
        let response = self.render(visit, StatusCode::TOO_MANY_REQUESTS, Some(&error))?;
        Ok(with_retry_after(response, Some(secs)))
    }
}

/// A form's `GET`: the empty form, going to the query's `next` afterwards.
fn show_form(
    visit: &Visit,
    query: Option<&str>,
    form: for<'a> fn(&'a str, &'a str) -> Form<'a>,
) -> PageResult {
    let next = safe_next(super::query_params(query)?.get("next"));
    form(&next, "").render(visit, StatusCode::OK, None)
}

/// Starts a browser session for `localpart` and redirects to `next`.
async fn sign_in(state: &OAuthState, visit: &Visit, localpart: &str, next: &str) -> PageResult {
    let token = tokens::generate(tokens::Kind::BrowserSession);
    let now = state.now_ms();
    let life = state.lifetimes().browser_session;
    let expires_at = now.saturating_add(ms(life));
    state
        .db()
        .create_browser_session(&tokens::hash(&token), localpart, now, expires_at)
        .await?;
    let mut response = see_other(next);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, cookie_names(state).0, &token, Some(life)),
    );
    visit.finish(&mut response);
    Ok(response)
}

/// `GET /login`.
pub(crate) async fn login_page(visit: Visit, RawQuery(query): RawQuery) -> PageResult {
    show_form(&visit, query.as_deref(), Form::login)
}

/// `POST /login`: username and password; a locked account cannot sign in.
///
/// The attempt is counted against the address and the account before the password is
/// checked (see [`OAuthState::begin_password_attempt`]), and the check itself waits for one
/// of the process's Argon2 threads.
pub(crate) async fn login_submit(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    PageForm { visit, params }: PageForm,
) -> PageResult {
    let next = safe_next(params.get("next"));
    let typed = params.get("username").unwrap_or("");
    let localpart = password::localpart_of(typed, state.server_name());
    let user = state.db().user(&localpart).await?;
    let form = Form::login(&next, typed);
    let attempt = match state.begin_password_attempt(ip, &localpart) {
        Ok(attempt) => attempt,
        Err(wait) => return form.too_many_attempts(&visit, wait),
    };
    let given = params.get("password").unwrap_or("").to_owned();
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let matches = password::verify_bounded(given, stored).await;
    match user {
        Some(user) if matches && user.password_hash.is_some() && !user.locked => {
            attempt.succeeded();
            sign_in(&state, &visit, &user.localpart, &next).await
        }
        _ => {
            // Dropping the attempt leaves it counted as a failure.
            drop(attempt);
            let error = "Wrong username or password, or the account is locked.";
            form.render(&visit, StatusCode::UNAUTHORIZED, Some(error))
        }
    }
}

/// The registration pages exist only when registration is enabled: an extractor placed
/// before the others, so that nothing else is looked at when it is not.
pub(crate) struct RegistrationOpen;

impl FromRequestParts<OAuthState> for RegistrationOpen {
    type Rejection = PageError;

    async fn from_request_parts(_: &mut Parts, state: &OAuthState) -> Result<Self, PageError> {
        if state.registration_enabled() {
            return Ok(Self);
        }
        Err(PageError::NotFound(
            "registration is disabled on this server".into(),
        ))
    }
}

/// `GET /register` (only when registration is enabled).
pub(crate) async fn register_page(
    _: RegistrationOpen,
    visit: Visit,
    RawQuery(query): RawQuery,
) -> PageResult {
    show_form(&visit, query.as_deref(), Form::register)
}

/// `POST /register`: creates the account and signs it in.
pub(crate) async fn register_submit(
    _: RegistrationOpen,
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    PageForm { visit, params }: PageForm,
) -> PageResult {
    let next = safe_next(params.get("next"));
    let username = params.get("username").unwrap_or("").trim().to_owned();
    let form = Form::register(&next, &username);
    let _slot = match state.begin_registration(ip) {
        Ok(slot) => slot,
        Err(wait) => return form.too_many_attempts(&visit, wait),
    };
    let pw = params.get("password").unwrap_or("").to_owned();
    let refuse = |error: &str| form.render(&visit, StatusCode::BAD_REQUEST, Some(error));
    if !password::valid_localpart(&username) {
        return refuse("Usernames use lowercase letters, digits and ._=-/+ only.");
    }
    if pw.chars().count() < password::MIN_PASSWORD_LEN {
        return refuse("The password must have at least 8 characters.");
    }
    if params.get("password2") != Some(pw.as_str()) {
        return refuse("The two passwords differ.");
    }
    let hashed = password::hash_bounded(pw)
        .await
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    match state
        .db()
        .create_user(&username, Some(&hashed), state.now_ms())
        .await
    {
        Ok(()) => sign_in(&state, &visit, &username, &next).await,
        Err(DbError::Conflict) => {
            state.registration_failed(ip);
            refuse("This username is taken.")
        }
        Err(err) => Err(err.into()),
    }
}

/// `POST /logout`: ends the browser session.
pub(crate) async fn logout(
    State(state): State<OAuthState>,
    headers: HeaderMap,
    // Only for the CSRF check: a forged form must not sign anyone out.
    _: PageForm,
) -> PageResult {
    let session_cookie = cookie_names(&state).0;
    if let Some(token) = super::cookie(&headers, session_cookie) {
        state
            .db()
            .delete_browser_session(&tokens::hash(token))
            .await?;
    }
    let mut response = see_other("/login");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, session_cookie, "", Some(Duration::ZERO)),
    );
    Ok(response)
}
