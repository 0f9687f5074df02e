//! Account pages behind `account_management_uri`: `?action=` selects the view, with the
//! spec's stable action names and the MSC4191 ones older clients send.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Serialize;

use crate::oauth::endpoints::load_client;
use crate::oauth::{OAuthState, ms};
use crate::web::{PageError, PageForm, PageResult, Visit, see_other, show_time};

#[derive(Serialize)]
struct DeviceRow {
    device_id: String,
    client: String,
    since: String,
}

async fn client_label(state: &OAuthState, client_id: Option<&str>) -> Result<String, PageError> {
    Ok(match client_id {
        None => "Issued by the server administrator".to_owned(),
        Some(id) => match load_client(state, id).await? {
            Some(c) => c.display_name(),
            None => id.to_owned(),
        },
    })
}

fn no_such_device() -> PageError {
    PageError::NotFound("you have no device with this ID".into())
}

/// `GET /account[?action=…&device_id=…]`.
pub(crate) async fn account_page(
    State(state): State<OAuthState>,
    RawQuery(query): RawQuery,
    visit: Visit,
) -> PageResult {
    let params = crate::web::query_params(query.as_deref())?;
    let localpart = visit.user("/account", query.as_deref())?;
    let device_id = params.get("device_id");
    match (params.get("action"), device_id) {
        (Some("org.matrix.device_view" | "org.matrix.session_view"), Some(id)) => {
            device_page(&state, &visit, &localpart, id, false).await
        }
        (Some("org.matrix.device_delete" | "org.matrix.session_end"), Some(id)) => {
            device_page(&state, &visit, &localpart, id, true).await
        }
        (Some("org.matrix.cross_signing_reset"), _) => visit.render(
            StatusCode::OK,
            "reset.html",
            minijinja::context! { title => "Reset cross-signing keys" },
        ),
        _ => {
            let mut devices = Vec::new();
            for d in state.db().devices(&localpart).await? {
                devices.push(DeviceRow {
                    client: client_label(&state, d.client_id.as_deref()).await?,
                    since: d
                        .session_created_at
                        .map(show_time)
                        .unwrap_or_else(|| "not signed in".into()),
                    device_id: d.device_id,
                });
            }
            let notice = params.get("notice").map(|n| match n {
                "device_deleted" => "The device was signed out.",
                _ => "",
            });
            visit.render(
                StatusCode::OK,
                "account.html",
                minijinja::context! { title => "Your account", devices => devices, notice => notice },
            )
        }
    }
}

async fn device_page(
    state: &OAuthState,
    visit: &Visit,
    localpart: &str,
    device_id: &str,
    confirm_delete: bool,
) -> PageResult {
    let Some(device) = state.db().device(localpart, device_id).await? else {
        return Err(no_such_device());
    };
    visit.render(
        StatusCode::OK,
        "device.html",
        minijinja::context! {
            title => format!("Device {}", device.device_id),
            client => client_label(state, device.client_id.as_deref()).await?,
            created => show_time(device.created_at),
            since => device.session_created_at.map(show_time),
            display_name => device.display_name,
            device_id => device.device_id,
            confirm_delete => confirm_delete,
        },
    )
}

/// `POST /account/device/delete`: signs a device out (revokes its tokens, removes it).
pub(crate) async fn delete_device(
    State(state): State<OAuthState>,
    PageForm { visit, params }: PageForm,
) -> PageResult {
    let localpart = visit.user("/account", None)?;
    let device_id = params
        .get("device_id")
        .ok_or_else(|| PageError::BadRequest("device_id is missing".into()))?;
    if !state
        .db()
        .delete_device(&localpart, device_id, state.now_ms())
        .await?
    {
        return Err(no_such_device());
    }
    state.synapse_device_ended(&localpart, device_id).await?;
    Ok(see_other("/account?notice=device_deleted"))
}

/// `POST /account/cross-signing-reset`: lets a device replace the cross-signing keys without
/// user-interactive auth for a short while (read by `/keys/device_signing/upload`).
pub(crate) async fn allow_reset(
    State(state): State<OAuthState>,
    PageForm { visit, .. }: PageForm,
) -> PageResult {
    let action = Some("action=org.matrix.cross_signing_reset");
    let localpart = visit.user("/account", action)?;
    let now = state.now_ms();
    let until = now.saturating_add(ms(state.lifetimes().cross_signing_reset));
    state
        .db()
        .approve_cross_signing_reset(&localpart, now, until)
        .await?;
    state
        .hooks()
        .cross_signing_reset_allowed(&localpart, state.now_ms())
        .await?;
    visit.render(
        StatusCode::OK,
        "reset.html",
        minijinja::context! { title => "Reset cross-signing keys", allowed_until => show_time(until) },
    )
}

/// The account pages (`account_management_uri`).
pub fn routes() -> Router<OAuthState> {
    Router::new()
        .route("/account", get(account_page))
        .route("/account/device/delete", post(delete_device))
        .route("/account/cross-signing-reset", post(allow_reset))
}
