//! RFC 7591 client metadata under the Matrix rules: public clients only, a mandatory https
//! `client_uri`, and redirect URIs tied to that URI's host so that a registration cannot name
//! someone else's application.

use serde_json::{Map, Value};
use url::{Host, Url};

/// `grant_type` of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", DEVICE_CODE_GRANT];

/// Metadata keys whose value is a URI on the `client_uri` host (each may be localized).
const HOSTED_URIS: [&str; 3] = ["logo_uri", "policy_uri", "tos_uri"];

/// Why metadata is refused; the two RFC 7591 error codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// `invalid_redirect_uri`.
    #[error("{0}")]
    RedirectUri(String),
    /// `invalid_client_metadata`.
    #[error("{0}")]
    Metadata(String),
}

/// Registered metadata, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientMetadata {
    /// Canonical JSON object (sorted keys, only the fields this server understands).
    pub json: Map<String, Value>,
    /// `native` (true) or `web`.
    pub native: bool,
    /// Redirect URIs as registered.
    pub redirect_uris: Vec<String>,
    /// Grant types.
    pub grant_types: Vec<String>,
    /// `client_uri`.
    pub client_uri: String,
}

impl ClientMetadata {
    /// Name to show people: `client_name`, else the `client_uri` host.
    pub fn display_name(&self) -> String {
        match self.json.get("client_name").and_then(Value::as_str) {
            Some(name) if !name.trim().is_empty() => name.to_owned(),
            _ => Url::parse(&self.client_uri)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| self.client_uri.clone()),
        }
    }

    /// Whether the client registered `grant_type`.
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    /// The registered URI that `requested` matches: exactly, or for native clients a loopback
    /// URI that differs only in port (RFC 8252 §7.3: the port is chosen at run time).
    pub fn matching_redirect_uri(&self, requested: &str) -> bool {
        if self.redirect_uris.iter().any(|r| r == requested) {
            return true;
        }
        if !self.native {
            return false;
        }
        let Ok(mut wanted) = Url::parse(requested) else {
            return false;
        };
        if !is_loopback_http(&wanted) {
            return false;
        }
        let _ = wanted.set_port(None);
        self.redirect_uris.iter().any(|registered| {
            Url::parse(registered)
                .is_ok_and(|mut r| is_loopback_http(&r) && r.set_port(None).is_ok() && r == wanted)
        })
    }

    /// Reads back metadata stored by [`validate`].
    pub fn from_stored(text: &str) -> Option<Self> {
        let json: Map<String, Value> = serde_json::from_str(text).ok()?;
        let strings = |key: &str| -> Vec<String> {
            json.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Self {
            native: json.get("application_type").and_then(Value::as_str) == Some("native"),
            redirect_uris: strings("redirect_uris"),
            grant_types: strings("grant_types"),
            client_uri: json.get("client_uri")?.as_str()?.to_owned(),
            json,
        })
    }
}

fn is_loopback_http(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            _ => false,
        }
}

/// `host` is `base` or a subdomain of it.
fn within(host: &str, base: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let base = base.to_ascii_lowercase();
    host == base || host.ends_with(&format!(".{base}"))
}

fn meta_err(msg: impl Into<String>) -> MetadataError {
    MetadataError::Metadata(msg.into())
}

fn redirect_err(uri: &str, why: &str) -> MetadataError {
    MetadataError::RedirectUri(format!("redirect URI {uri:?}: {why}"))
}

/// `client_uri`: an https URL with a domain host and no user information.
fn check_client_uri(value: &str) -> Result<String, MetadataError> {
    let url = Url::parse(value).map_err(|_| meta_err("client_uri is not a valid URI"))?;
    if url.scheme() != "https" {
        return Err(meta_err("client_uri must use https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(meta_err("client_uri must not contain user information"));
    }
    match url.host() {
        Some(Host::Domain(domain)) => Ok(domain.to_owned()),
        _ => Err(meta_err("client_uri must have a domain name host")),
    }
}

/// A URI that must live on the client's site (`logo_uri`, `policy_uri`, `tos_uri`).
fn check_hosted_uri(key: &str, value: &str, client_host: &str) -> Result<(), MetadataError> {
    let url = Url::parse(value).map_err(|_| meta_err(format!("{key} is not a valid URI")))?;
    let ok = url.scheme() == "https"
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str().is_some_and(|h| within(h, client_host));
    if ok {
        Ok(())
    } else {
        Err(meta_err(format!(
            "{key} must be an https URI on the client_uri host"
        )))
    }
}

fn check_redirect_uri(uri: &str, native: bool, client_host: &str) -> Result<(), MetadataError> {
    let url = Url::parse(uri).map_err(|_| redirect_err(uri, "not a valid URI"))?;
    if url.fragment().is_some() {
        return Err(redirect_err(uri, "must not contain a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(redirect_err(uri, "must not contain user information"));
    }
    match url.scheme() {
        "https" => {
            let on_site = url.host_str().is_some_and(|h| within(h, client_host))
                && matches!(url.host(), Some(Host::Domain(_)));
            if on_site {
                Ok(())
            } else {
                Err(redirect_err(
                    uri,
                    "https redirect URIs must be on the client_uri host",
                ))
            }
        }
        "http" if native => {
            if is_loopback_http(&url) {
                Ok(())
            } else if url.host_str() == Some("localhost") {
                Err(redirect_err(
                    uri,
                    "use http://127.0.0.1 or http://[::1], not localhost",
                ))
            } else {
                Err(redirect_err(
                    uri,
                    "http is only allowed on the loopback interface",
                ))
            }
        }
        "http" => Err(redirect_err(
            uri,
            "web clients must use https redirect URIs",
        )),
        scheme if native => {
            // Private-use scheme: reverse DNS of the client's domain, no authority part.
            if !scheme.contains('.') {
                return Err(redirect_err(
                    uri,
                    "a private-use scheme must be a reversed domain name",
                ));
            }
            if url.host().is_some() {
                return Err(redirect_err(
                    uri,
                    "a private-use URI must not have an authority (use scheme:/path)",
                ));
            }
            let domain: Vec<&str> = scheme.split('.').rev().collect();
            if domain.iter().any(|label| label.is_empty())
                || !within(&domain.join("."), client_host)
            {
                return Err(redirect_err(
                    uri,
                    "the private-use scheme must be the reversed client_uri host or a subdomain of it",
                ));
            }
            Ok(())
        }
        _ => Err(redirect_err(
            uri,
            "web clients must use https redirect URIs",
        )),
    }
}

fn string_list(body: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, MetadataError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| meta_err(format!("{key} must be an array of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(meta_err(format!("{key} must be an array of strings"))),
    }
}

/// Checks a registration request body and returns the canonical metadata.
pub fn validate(body: &Value) -> Result<ClientMetadata, MetadataError> {
    // PostgreSQL text cannot hold NUL: refused for every back end alike.
    if crate::matrix::has_nul(body) {
        return Err(meta_err("client metadata must not contain NUL characters"));
    }
    let Value::Object(body) = body else {
        return Err(meta_err("the registration request must be a JSON object"));
    };
    let client_uri = match body.get("client_uri") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(meta_err("client_uri must be a string")),
        None => return Err(meta_err("client_uri is required")),
    };
    let client_host = check_client_uri(&client_uri)?;
    let native = match body.get("application_type") {
        None | Some(Value::Null) => false,
        Some(Value::String(t)) if t == "web" => false,
        Some(Value::String(t)) if t == "native" => true,
        Some(_) => return Err(meta_err("application_type must be web or native")),
    };
    match body.get("token_endpoint_auth_method") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "none" => {}
        Some(_) => {
            return Err(meta_err(
                "token_endpoint_auth_method must be none: only public clients are supported",
            ));
        }
    }
    let grant_types =
        string_list(body, "grant_types")?.unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    if grant_types.is_empty() {
        return Err(meta_err("grant_types must not be empty"));
    }
    if let Some(bad) = grant_types
        .iter()
        .find(|g| !GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(meta_err(format!("unsupported grant type {bad:?}")));
    }
    let wants_code = grant_types.iter().any(|g| g == "authorization_code");
    let response_types = string_list(body, "response_types")?.unwrap_or_else(|| {
        if wants_code {
            vec!["code".to_owned()]
        } else {
            Vec::new()
        }
    });
    if let Some(bad) = response_types.iter().find(|r| r.as_str() != "code") {
        return Err(meta_err(format!("unsupported response type {bad:?}")));
    }
    if wants_code != response_types.iter().any(|r| r == "code") {
        return Err(meta_err(
            "response_types code and grant type authorization_code go together",
        ));
    }
    let redirect_uris = string_list(body, "redirect_uris")?.unwrap_or_default();
    if wants_code && redirect_uris.is_empty() {
        return Err(MetadataError::RedirectUri(
            "redirect_uris is required for the authorization_code grant".into(),
        ));
    }
    for uri in &redirect_uris {
        check_redirect_uri(uri, native, &client_host)?;
    }

    let mut json = Map::new();
    for (key, value) in body {
        let (base, lang) = match key.split_once('#') {
            Some((base, lang)) => (base, Some(lang)),
            None => (key.as_str(), None),
        };
        if lang.is_some_and(|l| {
            l.is_empty() || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            return Err(meta_err(format!("{key}: invalid language tag")));
        }
        if base == "client_name" || HOSTED_URIS.contains(&base) {
            let Value::String(text) = value else {
                return Err(meta_err(format!("{key} must be a string")));
            };
            if base != "client_name" {
                check_hosted_uri(key, text, &client_host)?;
            }
            json.insert(key.clone(), value.clone());
        } else if lang.is_some() && base == "client_uri" {
            let Value::String(text) = value else {
                return Err(meta_err(format!("{key} must be a string")));
            };
            check_hosted_uri(key, text, &client_host)?;
            json.insert(key.clone(), value.clone());
        }
        // Other keys (contacts, software_id, …) are not used and so not stored or echoed.
    }
    json.insert("client_uri".into(), Value::String(client_uri.clone()));
    json.insert(
        "application_type".into(),
        Value::String(if native { "native" } else { "web" }.into()),
    );
    json.insert("token_endpoint_auth_method".into(), "none".into());
    json.insert("grant_types".into(), grant_types.clone().into());
    json.insert("response_types".into(), response_types.into());
    json.insert("redirect_uris".into(), redirect_uris.clone().into());
    Ok(ClientMetadata {
        json,
        native,
        redirect_uris,
        grant_types,
        client_uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn native(uris: &[&str]) -> Result<ClientMetadata, MetadataError> {
        validate(&json!({
            "client_uri": "https://example.com/",
            "application_type": "native",
            "redirect_uris": uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
    }

    fn web(uris: &[&str]) -> Result<ClientMetadata, MetadataError> {
        validate(&json!({
            "client_uri": "https://example.com/",
            "redirect_uris": uris,
        }))
    }

    #[test]
    fn redirect_uri_lists() {
        for ok in [
            "https://example.com/callback",
            "https://app.example.com/callback",
        ] {
            assert!(web(&[ok]).is_ok(), "web {ok}");
        }
        for bad in [
            "http://example.com/callback",
            "https://example.org/callback",
            "https://notexample.com/callback",
            "https://example.com/cb#frag",
            "https://user@example.com/cb",
            "com.example.app:/callback",
            "http://127.0.0.1/callback",
        ] {
            assert!(
                matches!(web(&[bad]), Err(MetadataError::RedirectUri(_))),
                "web {bad}"
            );
        }
        for ok in [
            "com.example.app:/callback",
            "com.example:/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:1234/callback",
            "http://[::1]/callback",
            "https://example.com/callback",
        ] {
            assert!(native(&[ok]).is_ok(), "native {ok}");
        }
        for bad in [
            "http://localhost/callback",
            "http://localhost:1234/callback",
            "com.example.app://callback/",
            "org.example:/callback",
            "com.notexample:/callback",
            "example:/callback",
            "http://192.168.1.1/callback",
            "https://example.org/callback",
        ] {
            assert!(
                matches!(native(&[bad]), Err(MetadataError::RedirectUri(_))),
                "native {bad}"
            );
        }
    }

    #[test]
    fn metadata_refusals() {
        for body in [
            json!({"redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "http://example.com/", "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://u:p@example.com/", "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "application_type": "tv", "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "token_endpoint_auth_method": "client_secret_basic", "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "grant_types": ["implicit"], "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "response_types": ["token"], "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "grant_types": ["refresh_token", DEVICE_CODE_GRANT], "response_types": ["code"]}),
            json!({"client_uri": "https://example.com/", "logo_uri": "https://evil.org/logo.png", "redirect_uris": ["https://example.com/cb"]}),
            json!({"client_uri": "https://example.com/", "tos_uri#fr": "https://evil.org/tos", "redirect_uris": ["https://example.com/cb"]}),
        ] {
            assert!(
                matches!(validate(&body), Err(MetadataError::Metadata(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn canonical_and_localized() {
        let m = validate(&json!({
            "client_uri": "https://example.com/",
            "client_name": "Example",
            "client_name#fr": "Exemple",
            "policy_uri#fr": "https://example.com/fr/policy",
            "grant_types": [DEVICE_CODE_GRANT, "refresh_token"],
            "contacts": ["x@example.com"],
        }))
        .unwrap();
        assert_eq!(m.json["client_name#fr"], "Exemple");
        assert!(!m.json.contains_key("contacts"));
        assert_eq!(m.display_name(), "Example");
        assert!(m.allows_grant(DEVICE_CODE_GRANT));
        let stored = serde_json::to_string(&m.json).unwrap();
        assert_eq!(ClientMetadata::from_stored(&stored).unwrap(), m);
    }

    #[test]
    fn loopback_port_agnostic_for_native_only() {
        let m = native(&["http://127.0.0.1/callback", "com.example.app:/cb"]).unwrap();
        assert!(m.matching_redirect_uri("http://127.0.0.1:49152/callback"));
        assert!(m.matching_redirect_uri("com.example.app:/cb"));
        assert!(!m.matching_redirect_uri("http://127.0.0.1:49152/other"));
        assert!(!m.matching_redirect_uri("com.example.app:/cb2"));
        let w = web(&["https://example.com/cb"]).unwrap();
        assert!(!w.matching_redirect_uri("https://example.com/cb?x=1"));
    }
}
