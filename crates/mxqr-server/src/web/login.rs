//! Sign-in, self-registration and sign-out.

use super::{
    PageBody, PageError, PageResult, SESSION_COOKIE, Visit, safe_next, see_other, set_cookie,
};
use crate::db::DbError;
use crate::oauth::endpoints::Params;
use crate::oauth::{OAuthState, RequestIp, password, tokens};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

fn form(body: &Bytes) -> Result<Params, PageError> {
    Params::parse(body).map_err(PageError::BadRequest)
}

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
        set_cookie(state, SESSION_COOKIE, &token, Some(life)),
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

/// `POST /login`: username and password; a locked account cannot sign in.
pub(crate) async fn login_submit(
    State(state): State<OAuthState>,
    RequestIp(ip): RequestIp,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> PageResult {
    let visit = Visit::of(&state, &headers).await?;
    let params = form(&body)?;
    visit.check_csrf(params.get("csrf"))?;
    state.check_attempt(ip).map_err(PageError::RateLimited)?;
    let next = safe_next(params.get("next"));
    let typed = params.get("username").unwrap_or("");
    let localpart = password::localpart_of(typed, state.server_name());
    let given = params.get("password").unwrap_or("").to_owned();
    let user = state.db().user(&localpart).await?;
    let stored = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| password::dummy_hash().to_owned());
    let matches = tokio::task::spawn_blocking(move || password::verify(&given, &stored))
        .await
        .unwrap_or(false);
    match user {
        Some(user) if matches && user.password_hash.is_some() && !user.locked => {
            sign_in(&state, &visit, &user.localpart, &next).await
        }
        _ => {
            state.attempt_failed(ip);
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
    RequestIp(ip): RequestIp,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> PageResult {
    if !state.registration_enabled() {
        return Err(PageError::NotFound(
            "registration is disabled on this server".into(),
        ));
    }
    let visit = Visit::of(&state, &headers).await?;
    let params = form(&body)?;
    visit.check_csrf(params.get("csrf"))?;
    state.check_attempt(ip).map_err(PageError::RateLimited)?;
    let next = safe_next(params.get("next"));
    let username = params.get("username").unwrap_or("").trim().to_owned();
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
    let hashed = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| PageError::BadRequest(format!("password could not be processed: {e}")))?
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    match state
        .db()
        .create_user(&username, Some(&hashed), state.now_ms())
        .await
    {
        Ok(()) => sign_in(&state, &visit, &username, &next).await,
        Err(DbError::Conflict) => {
            state.attempt_failed(ip);
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
    let visit = Visit::of(&state, &headers).await?;
    let params = form(&body)?;
    visit.check_csrf(params.get("csrf"))?;
    if let Some(token) = super::cookie(&headers, SESSION_COOKIE) {
        state
            .db()
            .delete_browser_session(&tokens::hash(token))
            .await?;
    }
    let mut response = see_other("/login");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", Some(std::time::Duration::ZERO)),
    );
    Ok(response)
}
