//! RFC 7591 client metadata under the Matrix rules: public clients only, a mandatory https
//! `client_uri` on a registrable domain, and redirect URIs tied to that URI's host so that a
//! registration cannot name someone else's application. Sizes are capped because registration
//! is unauthenticated and its rows are kept.

use serde_json::{Map, Value};
use url::{Host, Url};

/// `grant_type` of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", DEVICE_CODE_GRANT];

/// Metadata keys whose value is a URI on the `client_uri` host (each may be localized).
const HOSTED_URIS: [&str; 3] = ["logo_uri", "policy_uri", "tos_uri"];

/// Longest `client_name` (in characters), as people see it on the consent page.
const MAX_CLIENT_NAME_CHARS: usize = 256;
/// Longest URI of any kind, in bytes.
const MAX_URI_BYTES: usize = 2048;
/// Redirect URIs per client; real clients register one or two.
const MAX_REDIRECT_URIS: usize = 10;
/// Localized (`key#lang`) values per client, all keys together.
const MAX_LOCALIZED: usize = 32;
/// Longest language tag after `#` (BCP 47 tags in use are far shorter).
const MAX_LANGUAGE_TAG: usize = 35;

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

/// An `http` URI on one of the Matrix spec's loopback hosts: `localhost`, `127.0.0.1`,
/// `[::1]`.
fn is_loopback_http(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            Some(Host::Domain(name)) => name == "localhost",
            None => false,
        }
}

/// A name that resolves to this machine (RFC 6761 §6.3).
fn is_localhost_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
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

/// The URI `value` of metadata `key`, at most [`MAX_URI_BYTES`] long.
fn parse_uri(key: &str, value: &str) -> Result<Url, MetadataError> {
    if value.len() > MAX_URI_BYTES {
        return Err(meta_err(format!(
            "{key} is longer than {MAX_URI_BYTES} bytes"
        )));
    }
    Url::parse(value).map_err(|_| meta_err(format!("{key} is not a valid URI")))
}

/// `client_uri`: an https URL without user information whose host is a domain under a public
/// suffix. A public suffix itself (`com`, `github.io`) would make every site under it the
/// client's site, for its redirect URIs too; `localhost` and IP literals name no site at all.
fn check_client_uri(value: &str) -> Result<String, MetadataError> {
    let url = parse_uri("client_uri", value)?;
    if url.scheme() != "https" {
        return Err(meta_err("client_uri must use https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(meta_err("client_uri must not contain user information"));
    }
    let Some(Host::Domain(domain)) = url.host() else {
        return Err(meta_err("client_uri must have a domain name host"));
    };
    let host = domain.strip_suffix('.').unwrap_or(domain);
    if is_localhost_name(host) {
        return Err(meta_err("client_uri must not be on localhost"));
    }
    if psl::domain_str(host).is_none() {
        return Err(meta_err(
            "client_uri must be on a registrable domain, not a public suffix",
        ));
    }
    Ok(host.to_owned())
}

/// A URI that must live on the client's site (`logo_uri`, `policy_uri`, `tos_uri`).
fn check_hosted_uri(key: &str, value: &str, client_host: &str) -> Result<(), MetadataError> {
    let url = parse_uri(key, value)?;
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
    if uri.len() > MAX_URI_BYTES {
        return Err(MetadataError::RedirectUri(format!(
            "a redirect URI is longer than {MAX_URI_BYTES} bytes"
        )));
    }
    redirect_uri_refusal(uri, native, client_host)
        .map_err(|why| MetadataError::RedirectUri(format!("redirect URI {uri:?}: {why}")))
}

/// Why `uri` cannot be registered by a client of `client_host`, if it cannot.
fn redirect_uri_refusal(uri: &str, native: bool, client_host: &str) -> Result<(), &'static str> {
    let url = Url::parse(uri).map_err(|_| "not a valid URI")?;
    if url.fragment().is_some() {
        return Err("must not contain a fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information");
    }
    match url.scheme() {
        "https" => {
            let on_site = url.host_str().is_some_and(|h| within(h, client_host))
                && matches!(url.host(), Some(Host::Domain(_)));
            if !on_site {
                return Err("https redirect URIs must be on the client_uri host");
            }
        }
        "http" if native => {
            if !is_loopback_http(&url) {
                return Err(
                    "http is only allowed on the loopback interface (localhost, 127.0.0.1, [::1])",
                );
            }
            // Matrix spec: no port is registered; any port is accepted at authorization.
            if url.port().is_some() {
                return Err(
                    "a loopback redirect URI must not have a port (any port is accepted when authorizing)",
                );
            }
        }
        scheme if native => {
            // Private-use scheme: reverse DNS of the client's domain, no authority part.
            if !scheme.contains('.') {
                return Err("a private-use scheme must be a reversed domain name");
            }
            if url.host().is_some() {
                return Err("a private-use URI must not have an authority (use scheme:/path)");
            }
            let domain: Vec<&str> = scheme.split('.').rev().collect();
            if domain.iter().any(|label| label.is_empty())
                || !within(&domain.join("."), client_host)
            {
                return Err(
                    "the private-use scheme must be the reversed client_uri host or a subdomain of it",
                );
            }
        }
        _ => return Err("web clients must use https redirect URIs"),
    }
    Ok(())
}

/// An array of strings, each kept once (in first-seen order).
fn string_list(body: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, MetadataError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut list: Vec<String> = Vec::new();
            for item in items {
                let text = item
                    .as_str()
                    .ok_or_else(|| meta_err(format!("{key} must be an array of strings")))?;
                if !list.iter().any(|seen| seen == text) {
                    list.push(text.to_owned());
                }
            }
            Ok(Some(list))
        }
        Some(_) => Err(meta_err(format!("{key} must be an array of strings"))),
    }
}

/// Checks a registration request body and returns the canonical metadata.
pub fn validate(body: &Value) -> Result<ClientMetadata, MetadataError> {
    // PostgreSQL text cannot hold NUL: refused for every back end alike.
    if crate::response::has_nul(body) {
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
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(MetadataError::RedirectUri(format!(
            "at most {MAX_REDIRECT_URIS} redirect URIs can be registered"
        )));
    }
    for uri in &redirect_uris {
        check_redirect_uri(uri, native, &client_host)?;
    }

    let mut json = Map::new();
    let mut localized = 0;
    for (key, value) in body {
        let (base, lang) = match key.split_once('#') {
            Some((base, lang)) => (base, Some(lang)),
            None => (key.as_str(), None),
        };
        if lang.is_some_and(|l| {
            l.is_empty()
                || l.len() > MAX_LANGUAGE_TAG
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            return Err(meta_err(format!("{key}: invalid language tag")));
        }
        let known = base == "client_name" || HOSTED_URIS.contains(&base) || base == "client_uri";
        if lang.is_some() && known {
            localized += 1;
            if localized > MAX_LOCALIZED {
                return Err(meta_err(format!(
                    "at most {MAX_LOCALIZED} localized values can be registered"
                )));
            }
        }
        // The plain `client_uri` is stored below; other keys (contacts, software_id, …) are
        // not used and so not stored or echoed.
        let hosted = HOSTED_URIS.contains(&base) || (lang.is_some() && base == "client_uri");
        if !hosted && base != "client_name" {
            continue;
        }
        let Value::String(text) = value else {
            return Err(meta_err(format!("{key} must be a string")));
        };
        if hosted {
            check_hosted_uri(key, text, &client_host)?;
        } else if text.chars().count() > MAX_CLIENT_NAME_CHARS {
            return Err(meta_err(format!(
                "{key} is longer than {MAX_CLIENT_NAME_CHARS} characters"
            )));
        }
        json.insert(key.clone(), value.clone());
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
            "http://[::1]/callback",
            "http://localhost/callback",
            "https://example.com/callback",
        ] {
            assert!(native(&[ok]).is_ok(), "native {ok}");
        }
        for bad in [
            "http://localhost:1234/callback",
            "http://127.0.0.1:1234/callback",
            "http://[::1]:1234/callback",
            "https://localhost/callback",
            "http://localhost.example.com/callback",
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
    fn client_uri_must_name_a_registrable_site() {
        let with = |client_uri: &str| {
            validate(&json!({"client_uri": client_uri, "grant_types": [DEVICE_CODE_GRANT]}))
        };
        for bad in [
            "https://com/",
            "https://github.io/",
            "https://co.uk/",
            "https://com./",
            "https://localhost/",
            "https://localhost./",
            "https://app.localhost/",
            "https://127.0.0.1/",
            "https://[::1]/",
        ] {
            assert!(
                matches!(with(bad), Err(MetadataError::Metadata(_))),
                "{bad} must be refused"
            );
        }
        for ok in [
            "https://example.com/",
            "https://someone.github.io/",
            "https://example.co.uk/app",
        ] {
            assert!(with(ok).is_ok(), "{ok} must be accepted");
        }
    }

    #[test]
    fn metadata_sizes_are_capped() {
        let base = || {
            json!({
                "client_uri": "https://example.com/",
                "application_type": "native",
                "redirect_uris": ["com.example.app:/cb"],
            })
        };
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            validate(&body)
        };
        // Characters, not bytes: 256 two-byte characters are fine.
        assert!(with("client_name", "é".repeat(256).into()).is_ok());
        assert!(matches!(
            with("client_name", "x".repeat(257).into()),
            Err(MetadataError::Metadata(_))
        ));
        assert!(matches!(
            with("client_name#fr", "x".repeat(257).into()),
            Err(MetadataError::Metadata(_))
        ));
        let long_path = "a".repeat(2048);
        assert!(matches!(
            with(
                "logo_uri",
                format!("https://example.com/{long_path}").into()
            ),
            Err(MetadataError::Metadata(_))
        ));
        assert!(matches!(
            with(
                "client_uri",
                format!("https://example.com/{long_path}").into()
            ),
            Err(MetadataError::Metadata(_))
        ));
        assert!(matches!(
            with(
                "redirect_uris",
                json!([format!("com.example.app:/{long_path}")])
            ),
            Err(MetadataError::RedirectUri(_))
        ));
        let uris = |n: usize| -> Vec<String> {
            (0..n).map(|i| format!("com.example.app:/cb{i}")).collect()
        };
        assert!(with("redirect_uris", json!(uris(10))).is_ok());
        assert!(matches!(
            with("redirect_uris", json!(uris(11))),
            Err(MetadataError::RedirectUri(_))
        ));
        // Localized variants are bounded too, or they would be a way around the caps.
        let mut many = base();
        for i in 0..40 {
            many[format!("client_name#x{i}")] = "Name".into();
        }
        assert!(matches!(validate(&many), Err(MetadataError::Metadata(_))));
        // Repeated grant types are stored once.
        let m = with(
            "grant_types",
            json!(["authorization_code", "authorization_code", "refresh_token"]),
        )
        .unwrap();
        assert_eq!(m.grant_types, ["authorization_code", "refresh_token"]);
    }

    #[test]
    fn loopback_port_agnostic_for_native_only() {
        let m = native(&[
            "http://127.0.0.1/callback",
            "http://localhost/cb",
            "http://[::1]/v6",
            "com.example.app:/cb",
        ])
        .unwrap();
        assert!(m.matching_redirect_uri("http://localhost:50000/cb"));
        assert!(m.matching_redirect_uri("http://localhost/cb"));
        assert!(m.matching_redirect_uri("http://[::1]:50000/v6"));
        assert!(
            !m.matching_redirect_uri("http://127.0.0.1:50000/cb"),
            "host differs"
        );
        assert!(!m.matching_redirect_uri("http://localhost:50000/callback"));
        assert!(!m.matching_redirect_uri("https://localhost:50000/cb"));
        assert!(m.matching_redirect_uri("http://127.0.0.1:49152/callback"));
        assert!(m.matching_redirect_uri("com.example.app:/cb"));
        assert!(!m.matching_redirect_uri("http://127.0.0.1:49152/other"));
        assert!(!m.matching_redirect_uri("com.example.app:/cb2"));
        let w = web(&["https://example.com/cb"]).unwrap();
        assert!(!w.matching_redirect_uri("https://example.com/cb?x=1"));
    }
}
