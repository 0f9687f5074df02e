//! Small response and request-body helpers shared by the handlers.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON response with an exact `Content-Length` (the body is fully buffered).
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    // Serialising our own plain structs and `json!` values cannot fail; fall back to `{}`.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The request body as bytes; an over-limit body becomes `413 M_TOO_LARGE` in Matrix JSON
/// rather than axum's plain-text rejection.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge("request body too large"))
            }
            Err(_) => Err(ApiError::InvalidParam("request body could not be read")),
        }
    }
}
