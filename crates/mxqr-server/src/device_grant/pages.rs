//! `/link`: the RFC 8628 verification URI. The person enters (or follows a link with) the
//! user code, sees what is asking and from where, confirms explicitly, and approves or denies.
//!
//! Guessing is bounded three ways: 20^8 codes, a per-address limit on wrong code entries (a
//! budget of its own, apart from password sign-ins: guessing one cannot lock people behind
//! the same NAT address out of the other), and a per-grant cap on lookups after which the
//! grant is refused.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;

use crate::accounts::UserCodeLookup;
use crate::client_ip::ClientIp;
use crate::oauth::endpoints::load_client;
use crate::oauth::{OAuthState, tokens};
use crate::web::{PageError, PageForm, PageResult, Visit, show_time};

fn entry_form(visit: &Visit, status: StatusCode, code: &str, error: Option<&str>) -> PageResult {
    visit.render(
        status,
        "link.html",
        minijinja::context! { title => "Sign in a device", code => code, error => error },
    )
}

/// Looks `typed` up (counted before the lookup, given back if it finds a grant) and shows the consent page or the entry form.
async fn show_grant(
    state: &OAuthState,
    visit: &Visit,
    ip: std::net::IpAddr,
    typed: &str,
    error: Option<&str>,
) -> PageResult {
    state
        .count_user_code_entry(ip)
        .map_err(PageError::RateLimited)?;
    let Some(code) = tokens::normalize_user_code(typed) else {
        let error = "That is not a valid code: it has 8 letters, like WDJB-MJHT.";
        return entry_form(visit, StatusCode::BAD_REQUEST, typed, Some(error));
    };
    let max = i64::from(state.lifetimes().user_code_max_lookups);
    let lookup = state
        .db()
        .lookup_user_code(&code, state.now_ms(), max)
        .await;
    let grant = match lookup.inspect_err(|_| state.uncount_user_code_entry(ip))? {
        UserCodeLookup::Pending(grant) => {
            state.uncount_user_code_entry(ip);
            grant
        }
        UserCodeLookup::NotFound => {
            let error = "No sign-in is waiting for this code. It may have expired: start again on the device.";
            return entry_form(visit, StatusCode::NOT_FOUND, typed, Some(error));
        }
        UserCodeLookup::TooManyAttempts => {
            let error = "This code was tried too many times and is no longer valid. Start again on the device.";
            return entry_form(visit, StatusCode::FORBIDDEN, "", Some(error));
        }
    };
    let client = load_client(state, &grant.client_id).await?;
    let existing = visit.existing_device(&grant.device_id).await?;
    let (client_name, client_uri) = match &client {
        Some(c) => (c.display_name(), c.client_uri.clone()),
        None => ("Unknown application".to_owned(), String::new()),
    };
    visit.render(
        StatusCode::OK,
        "device_consent.html",
        minijinja::context! {
            title => "Sign in a device",
            client_name => client_name,
            client_uri => client_uri,
            device_id => grant.device_id,
            existing_device => existing,
            requester_ip => grant.requester_ip,
            requester_ua => grant.requester_ua,
            requested_at => show_time(grant.created_at),
            user_code => tokens::display_user_code(&grant.user_code),
            code => grant.user_code,
            error => error,
        },
    )
}

/// `GET /link[?code=…]`.
pub(crate) async fn link_page(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
    visit: Visit,
) -> PageResult {
    let params = crate::web::query_params(query.as_deref())?;
    visit.user("/link", query.as_deref())?;
    match params.get("code") {
        Some(typed) => show_grant(&state, &visit, ip, typed, None).await,
        None => entry_form(&visit, StatusCode::OK, "", None),
    }
}

/// `POST /link`: a typed code (shows the consent page) or a decision on one.
pub(crate) async fn link_submit(
    State(state): State<OAuthState>,
    ClientIp(ip): ClientIp,
    PageForm { visit, params }: PageForm,
) -> PageResult {
    let localpart = visit.user("/link", None)?;
    let typed = params.get("code").unwrap_or("");
    let decision = params.get("decision");
    let approve = match decision {
        None => return show_grant(&state, &visit, ip, typed, None).await,
        Some("approve") => true,
        Some("deny") => false,
        Some(_) => return Err(PageError::BadRequest("unknown decision".into())),
    };
    if approve && params.get("confirm") != Some("yes") {
        let error = "Tick the box to confirm that you started this sign-in yourself.";
        return show_grant(&state, &visit, ip, typed, Some(error)).await;
    }
    state
        .count_user_code_entry(ip)
        .map_err(PageError::RateLimited)?;
    let Some(code) = tokens::normalize_user_code(typed) else {
        let error = "That is not a valid code.";
        return entry_form(&visit, StatusCode::BAD_REQUEST, typed, Some(error));
    };
    let decided = state
        .db()
        .decide_device_grant(&code, &localpart, approve, state.now_ms())
        .await
        .inspect_err(|_| state.uncount_user_code_entry(ip))?;
    if decided {
        state.uncount_user_code_entry(ip);
        state.device_grant_decided();
    }
    let (status, title, message) = match (decided, approve) {
        (true, true) => (
            StatusCode::OK,
            "Device signed in",
            "The device is being signed in. You can return to it now.",
        ),
        (true, false) => (
            StatusCode::OK,
            "Sign-in denied",
            "The device was not signed in.",
        ),
        (false, _) => (
            StatusCode::NOT_FOUND,
            "Code no longer valid",
            "This sign-in is no longer waiting: it expired or was already decided.",
        ),
    };
    visit.render(
        status,
        "message.html",
        minijinja::context! {
            title => title, message => message, error => !decided,
            link => "/account", link_text => "Your account",
        },
    )
}
