//! Sign-in, self-registration and sign-out.

use super::{
    PageBody, PageError, PageResult, Visit, safe_next, see_other, session_cookie, set_cookie,
};
use crate::accounts::DbError;
use crate::client_ip::ClientIp;
use crate::oauth::{OAuthState, password, tokens};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use std::time::Duration;

/// Starts a browser session for `localpart` and redirects to `next`.
async fn sign_in(state: &OAuthState, visit: &Visit, localpart: &str, next: &str) -> PageResult {
    let token = tokens::generate(tokens::Kind::BrowserSession);
    let now = state.now_ms();
    let life = state.lifetimes().browser_session;
    let expires_at = now.saturating_add(i64::try_from(life.as_millis()).unwrap_or(i64::MAX));
    state
        .db()
        .create_browser_session(&tokens::hash(&token), localpart, now, expires_at)
        .await?;
    let mut response = see_other(next);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, session_cookie(state), &token, Some(life)),
    );
    visit.finish(state, &mut response);
    Ok(response)
}

/// `GET /login`.
pub(crate) async fn login_page(
    State(state): State<OAuthState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    let visit = Visit::of(&state, &headers).await?;
    let query = super::query_params(query)?;
    let next = safe_next(query.get("next"));
    visit.render(
        &state,
        StatusCode::OK,
        "login.html",
        minijinja::context! { title => "Sign in", next => next, username => "" },
    )
}

/// The form `template` again, refusing the attempt for `wait`: 429 with `Retry-After`.
fn too_many_attempts(
    state: &OAuthState,
    visit: &Visit,
    template: &str,
    title: &str,
    next: &str,
    username: &str,
    wait: Duration,
) -> PageResult {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut response = visit.render(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        template,
        minijinja::context! {
            title => title,
            next => next,
            username => username,
            error => format!(
                "Too many attempts: try again in {secs} second{}.",
                if secs == 1 { "" } else { "s" }
            ),
        },
    )?;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Ok(response)
}

/// `POST /login`: username and password; a locked account cannot sign in.
///
/// The attempt is counted against the address and the account before the password is
/// checked (see [`OAuthState::begin_password_attempt`]), and the check itself waits for one
/// of the process's Argon2 threads.
pub(crate) async fn login_submit(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> PageResult {
    let (visit, params) = Visit::of_form(&state, &headers, &body).await?;
    let next = safe_next(params.get("next"));
    let typed = params.get("username").unwrap_or("");
    let localpart = password::localpart_of(typed, state.server_name());
    let user = state.db().user(&localpart).await?;
    let attempt = match state.begin_password_attempt(ip, &localpart) {
        Ok(attempt) => attempt,
        Err(wait) => {
            return too_many_attempts(&state, &visit, "login.html", "Sign in", &next, typed, wait);
        }
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
            visit.render(
                &state,
                StatusCode::UNAUTHORIZED,
                "login.html",
                minijinja::context! {
                    title => "Sign in",
                    next => next,
                    username => typed,
                    error => "Wrong username or password, or the account is locked.",
                },
            )
        }
    }
}

/// `GET /register` (only when registration is enabled).
pub(crate) async fn register_page(
    State(state): State<OAuthState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    if !state.registration_enabled() {
        return Err(PageError::NotFound(
            "registration is disabled on this server".into(),
        ));
    }
    let visit = Visit::of(&state, &headers).await?;
    let query = super::query_params(query)?;
    let next = safe_next(query.get("next"));
    visit.render(
        &state,
        StatusCode::OK,
        "register.html",
        minijinja::context! { title => "Create account", next => next, username => "" },
    )
}

/// `POST /register`: creates the account and signs it in.
pub(crate) async fn register_submit(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> PageResult {
    if !state.registration_enabled() {
        return Err(PageError::NotFound(
            "registration is disabled on this server".into(),
        ));
    }
    let (visit, params) = Visit::of_form(&state, &headers, &body).await?;
    let next = safe_next(params.get("next"));
    let username = params.get("username").unwrap_or("").trim().to_owned();
    let _slot = match state.begin_registration(ip) {
        Ok(slot) => slot,
        Err(wait) => {
            return too_many_attempts(
                &state,
                &visit,
                "register.html",
                "Create account",
                &next,
                &username,
                wait,
            );
        }
    };
    let pw = params.get("password").unwrap_or("").to_owned();
    let refuse = |error: &str| {
        visit.render(
            &state,
            StatusCode::BAD_REQUEST,
            "register.html",
            minijinja::context! {
                title => "Create account", next => &next, username => &username, error => error,
            },
        )
    };
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
    PageBody(body): PageBody,
) -> Result<Response, PageError> {
    // Only for the CSRF check: a forged form must not sign anyone out.
    Visit::of_form(&state, &headers, &body).await?;
    if let Some(token) = super::cookie(&headers, session_cookie(&state)) {
        state
            .db()
            .delete_browser_session(&tokens::hash(token))
            .await?;
    }
    let mut response = see_other("/login");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            session_cookie(&state),
            "",
            Some(std::time::Duration::ZERO),
        ),
    );
    Ok(response)
}
