//! MSC4388 rendezvous: JSON bodies, `sequence_token` versioning (docs/protocol.md §3b), plus the
//! idempotent `PUT …/{id}/{txnId}` form and the long-poll extension
//! (`GET …/{id}?since=<token>&timeout_ms=<n>`).

use std::sync::Arc;

use axum::extract::{Extension, FromRef, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::state::RendezvousState;
use super::{MAX_PAYLOAD, PollQuery, parse_id, refuse_navigation};
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ConflictStyle};
use crate::rendezvous::store::{SequenceToken, SessionMeta};
use crate::response::{PathParams, RawBody, bearer_token, json};

/// Stable prefix (Matrix spec).
pub const STABLE_PREFIX: &str = "/_matrix/client/v1/rendezvous";
/// Unstable prefix (what Synapse and ruma use today).
pub const UNSTABLE_PREFIX: &str = "/_matrix/client/unstable/io.element.msc4388/rendezvous";

/// Routes under both prefixes; they share sessions and differ only in the conflict errcode.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    RendezvousState: FromRef<S>,
{
    let under = |prefix: &str, style: ConflictStyle| {
        Router::new()
            .route(prefix, get(discover).post(create))
            .route(
                &format!("{prefix}/{{id}}"),
                get(read).put(write).delete(remove),
            )
            .route(&format!("{prefix}/{{id}}/{{txn_id}}"), put(write))
            .layer(Extension(style))
    };
    under(STABLE_PREFIX, ConflictStyle::Msc4388Stable)
        .merge(under(UNSTABLE_PREFIX, ConflictStyle::Msc4388Unstable))
}

#[derive(Deserialize)]
pub(crate) struct CreateBody {
    pub(crate) data: String,
}

#[derive(Deserialize)]
pub(crate) struct WriteBody {
    pub(crate) sequence_token: String,
    pub(crate) data: String,
}

/// Parses a JSON body, telling "not JSON" (`M_NOT_JSON`) from "wrong shape" (`M_BAD_JSON`).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => ApiError::BadJson(err.to_string()),
        _ => ApiError::NotJson(err.to_string()),
    })
}

pub(crate) fn check_data(data: &str) -> Result<(), ApiError> {
    // Bytes, not characters: 4-byte characters must not quadruple what a session holds.
    if data.len() > MAX_PAYLOAD {
        return Err(ApiError::TooLarge("data is larger than 4096 bytes"));
    }
    // PostgreSQL text cannot hold NUL: refuse it on every back end alike.
    if data.contains('\0') {
        return Err(ApiError::InvalidParam(
            "data must not contain NUL characters",
        ));
    }
    Ok(())
}

fn millis(meta: &SessionMeta) -> u64 {
    u64::try_from(meta.expires_in.as_millis()).unwrap_or(u64::MAX)
}

/// `GET <prefix>`: may this requester create a session?
async fn discover(
    State(state): State<RendezvousState>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let allowed = state.authorizer.may_create(bearer_token(&headers)).await;
    Json(json!({ "create_available": allowed }))
}

/// `POST <prefix>` `{"data"}` → `{"id","sequence_token","expires_in_ms"}`.
async fn create(
    State(state): State<RendezvousState>,
    Extension(style): Extension<ConflictStyle>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    if !state.authorizer.may_create(bearer_token(&headers)).await {
        return Err(ApiError::Forbidden(
            "creating a rendezvous session needs an access token here",
        ));
    }
    state.check_create_rate(client)?;
    let CreateBody { data } = parse_body(&body)?;
    check_data(&data)?;
    let (id, meta) = state.create(style, Arc::from(data)).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "id": id.to_string(),
            "sequence_token": meta.token.to_string(),
            "expires_in_ms": millis(&meta),
        }),
    ))
}

/// `GET <prefix>/{id}`, optionally long-polling until the token differs from `since`.
async fn read(
    State(state): State<RendezvousState>,
    Extension(style): Extension<ConflictStyle>,
    Extension(client): Extension<ClientIp>,
    PathParams(id): PathParams<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_navigation(&headers)?;
    let poll = PollQuery::parse(query.as_deref())?;
    let id = parse_id(&id)?;
    // A token we never issued differs from the current one: answer at once.
    let since = poll
        .since
        .and_then(|since| since.parse::<SequenceToken>().ok());
    let snapshot = state
        .read(client, style, id, since.zip(poll.timeout))
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "data": &*snapshot.data,
            "sequence_token": snapshot.meta.token.to_string(),
            "expires_in_ms": millis(&snapshot.meta),
        }),
    ))
}

/// Where a write goes: `<prefix>/{id}`, or `<prefix>/{id}/{txnId}` with a transaction ID.
#[derive(Deserialize)]
struct WritePath {
    id: String,
    txn_id: Option<String>,
}

/// `PUT <prefix>/{id}` `{"sequence_token","data"}` → `{"sequence_token"}`. Under
/// `<prefix>/{id}/{txnId}`, a repeat with the same transaction ID and body gets the first
/// answer again.
async fn write(
    State(state): State<RendezvousState>,
    Extension(style): Extension<ConflictStyle>,
    Extension(client): Extension<ClientIp>,
    PathParams(WritePath { id, txn_id }): PathParams<WritePath>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    if txn_id
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 255)
    {
        return Err(ApiError::InvalidParam("txnId must be 1 to 255 bytes"));
    }
    state.check_write_rate(client)?;
    let WriteBody {
        sequence_token,
        data,
    } = parse_body(&body)?;
    check_data(&data)?;
    let id = parse_id(&id)?;
    // A token we never issued cannot be current: that is a stale write, not a bad request.
    let expected = sequence_token
        .parse::<SequenceToken>()
        .map_err(|_| ApiError::ConcurrentWrite(style))?;
    let meta = state
        .update(style, id, expected, Arc::from(data), txn_id.map(Into::into))
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "sequence_token": meta.token.to_string() }),
    ))
}

/// `DELETE <prefix>/{id}` → `{}`.
async fn remove(
    State(state): State<RendezvousState>,
    Extension(style): Extension<ConflictStyle>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    state.delete(style, id).await?;
    Ok(json(StatusCode::OK, &json!({})))
}
