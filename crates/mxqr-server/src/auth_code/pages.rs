//! `GET/POST /oauth2/authorize`: the authorization-code grant's front channel.
//!
//! Until `client_id` and `redirect_uri` are known to belong together, errors are shown on a
//! page (redirecting to an unverified URI would make this server an open redirector); after
//! that they go back to the client as RFC 6749 §4.1.2.1 error responses.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use url::Url;

use crate::oauth::client::ClientMetadata;
use crate::oauth::endpoints::{Params, load_client};
use crate::oauth::model::auth_code::IssuedCode;
use crate::oauth::scope::{self, MatrixScope};
use crate::oauth::{OAuthState, ms, tokens};
use crate::web::{PageError, PageForm, PageResult, Visit, see_other};

/// Parameters carried from the consent page back to the POST.
const CARRIED: [&str; 9] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "prompt",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Query,
    Fragment,
}

struct AuthRequest {
    client_id: String,
    client: ClientMetadata,
    /// Where and how the answer goes back to the client.
    reply: Reply,
    scope: MatrixScope,
    challenge: String,
    prompt: Option<String>,
    carried: Vec<(String, String)>,
}

/// Where answers go once the redirect URI is verified: back to the client, in the query or the
/// fragment, with its `state`.
struct Reply {
    redirect_uri: String,
    mode: Mode,
    state: Option<String>,
}

impl Reply {
    /// A redirect to the client with `pairs`, then `state`.
    fn send(&self, pairs: &[(&str, &str)]) -> Response {
        let Ok(mut url) = Url::parse(&self.redirect_uri) else {
            return PageError::BadRequest("the redirect URI is not valid".into()).into_response();
        };
        let pairs = pairs
            .iter()
            .copied()
            .chain(self.state.as_deref().map(|s| ("state", s)));
        match self.mode {
            Mode::Query => {
                url.query_pairs_mut().extend_pairs(pairs);
            }
            Mode::Fragment => {
                let fragment = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish();
                url.set_fragment(Some(&fragment));
            }
        }
        see_other(url.as_str())
    }

    /// An RFC 6749 §4.1.2.1 error response.
    fn error(&self, error: &str, description: &str) -> PageError {
        let pairs = [("error", error), ("error_description", description)];
        PageError::Redirect(Box::new(self.send(&pairs)))
    }
}

async fn validate(state: &OAuthState, params: &Params) -> Result<AuthRequest, PageError> {
    let bad = |m: &str| PageError::BadRequest(m.to_owned());
    let client_id = params
        .get("client_id")
        .ok_or_else(|| bad("client_id is missing"))?;
    let client = load_client(state, client_id)
        .await?
        .ok_or_else(|| bad("this application is not registered (unknown client_id)"))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| bad("redirect_uri is missing"))?;
    if !client.matching_redirect_uri(redirect_uri) {
        return Err(bad("redirect_uri is not registered for this application"));
    }
    // Until the response mode is known, errors go back in the query.
    let mut reply = Reply {
        redirect_uri: redirect_uri.to_owned(),
        mode: Mode::Query,
        state: params.get("state").map(str::to_owned),
    };
    reply.mode = match params.get("response_mode") {
        None | Some("query") => Mode::Query,
        Some("fragment") => Mode::Fragment,
        Some(_) => {
            return Err(reply.error("invalid_request", "response_mode must be query or fragment"));
        }
    };
    if params.get("response_type") != Some("code") {
        return Err(reply.error("unsupported_response_type", "response_type must be code"));
    }
    if !client.allows_grant("authorization_code") {
        return Err(reply.error(
            "unauthorized_client",
            "the client did not register the authorization_code grant type",
        ));
    }
    if params.get("code_challenge_method") != Some("S256") {
        return Err(reply.error(
            "invalid_request",
            "PKCE with code_challenge_method S256 is required",
        ));
    }
    let challenge = params.get("code_challenge").unwrap_or("");
    if challenge.len() != 43 || !tokens::valid_pkce_string(challenge) {
        return Err(reply.error(
            "invalid_request",
            "code_challenge must be a 43-character S256 challenge",
        ));
    }
    let requested = scope::parse(params.get("scope").unwrap_or(""))
        .map_err(|e| reply.error("invalid_scope", &e.to_string()))?;
    let carried = CARRIED
        .iter()
        .filter_map(|k| params.get(k).map(|v| ((*k).to_owned(), v.to_owned())))
        .collect();
    Ok(AuthRequest {
        client_id: client_id.to_owned(),
        reply,
        scope: requested,
        challenge: challenge.to_owned(),
        prompt: params.get("prompt").map(str::to_owned),
        carried,
        client,
    })
}

fn authorize_path(carried: &[(String, String)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(carried)
        .finish();
    format!("/oauth2/authorize?{query}")
}

/// `GET /oauth2/authorize`: checks the request, signs the user in, then asks for consent.
pub(crate) async fn authorize_page(
    State(state): State<OAuthState>,
    visit: Visit,
    RawQuery(query): RawQuery,
) -> PageResult {
    let params = crate::web::query_params(query.as_deref())?;
    let request = validate(&state, &params).await?;
    if let Some(answer) = request
        .prompt
        .as_deref()
        .and_then(|prompt| silent_answer(&request, prompt, visit.localpart.is_some()))
    {
        return Err(answer);
    }
    let Some(localpart) = visit.localpart.clone() else {
        let create = request.prompt.as_deref() == Some("create") && state.registration_enabled();
        let form = if create { "/register" } else { "/login" };
        let next = authorize_path(&request.carried);
        return Ok(visit.redirect_to_form(form, &next));
    };
    consent(&state, &visit, &request, &localpart).await
}

/// OpenID Connect `prompt=none`: the client asks for an answer without any page. Consent is
/// asked on every authorization here, so a signed-in user still gets `consent_required`.
fn silent_answer(request: &AuthRequest, prompt: &str, signed_in: bool) -> Option<PageError> {
    let values: Vec<&str> = prompt.split(' ').collect();
    if !values.contains(&"none") {
        return None;
    }
    let reply = &request.reply;
    Some(if values.len() > 1 {
        reply.error("invalid_request", "prompt=none cannot be combined")
    } else if !signed_in {
        reply.error("login_required", "the user is not signed in")
    } else {
        reply.error(
            "consent_required",
            "the user has to approve this application on the consent page",
        )
    })
}

async fn consent(
    state: &OAuthState,
    visit: &Visit,
    request: &AuthRequest,
    localpart: &str,
) -> PageResult {
    let existing = visit.existing_device(&request.scope.device_id).await?;
    let mut response = visit.render(
        StatusCode::OK,
        "consent.html",
        minijinja::context! {
            title => "Allow access",
            client_name => request.client.display_name(),
            client_uri => &request.client.client_uri,
            device_id => &request.scope.device_id,
            existing_device => existing,
            redirect_uri => &request.reply.redirect_uri,
            params => &request.carried,
            user_id => state.user_id(localpart),
        },
    )?;
    crate::web::allow_form_redirect(&mut response, &request.reply.redirect_uri);
    Ok(response)
}

/// `POST /oauth2/authorize`: the consent decision.
pub(crate) async fn authorize_submit(
    State(state): State<OAuthState>,
    PageForm { visit, params }: PageForm,
) -> PageResult {
    let request = validate(&state, &params).await?;
    let localpart = visit.user(&authorize_path(&request.carried), None)?;
    if params.get("decision") != Some("approve") {
        return Err(request
            .reply
            .error("access_denied", "the user denied the request"));
    }
    let code = tokens::generate(tokens::Kind::AuthCode);
    let now = state.now_ms();
    let life = ms(state.lifetimes().auth_code);
    state
        .db()
        .create_auth_code(
            &tokens::hash(&code),
            &IssuedCode {
                client_id: request.client_id.clone(),
                localpart,
                device_id: request.scope.device_id.clone(),
                scope: request.scope.granted.clone(),
                redirect_uri: request.reply.redirect_uri.clone(),
                code_challenge: request.challenge.clone(),
                expires_at: now.saturating_add(life),
            },
            now,
        )
        .await?;
    Ok(request.reply.send(&[("code", &code)]))
}
