//! Finding a homeserver's client-server base URL from what a person types or a QR code
//! carries: a base URL, or a server name resolved through `.well-known/matrix/client`.

use url::Url;

use crate::ClientError;
use crate::body::{self, Cap, parse_json};
use crate::error::require_secure;
use crate::rendezvous::join;

/// Resolves `input` to a base URL. A URL with an `http`/`https` scheme is taken as the base
/// URL itself; anything else is a server name whose `.well-known/matrix/client` names the
/// base URL (falling back to `https://<name>/` when there is none, as the spec allows).
///
/// Either way the base URL must follow the QR decoder's rule (https, plain http only on
/// loopback): `input` may come from the other device (`m.login.protocols`), and the
/// well-known document from whatever server the name points at.
pub async fn homeserver_base_url(http: &reqwest::Client, input: &str) -> Result<Url, ClientError> {
    let input = input.trim();
    if let Ok(url) = Url::parse(input)
        && matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
    {
        require_secure("homeserver", &url)?;
        return Ok(url);
    }
    if input.is_empty() || input.contains(['/', ' ', '@']) {
        return Err(ClientError::Protocol(format!(
            "`{input}` is neither a URL nor a server name"
        )));
    }
    let name_url = Url::parse(&format!("https://{input}/"))
        .map_err(|e| ClientError::Protocol(format!("`{input}` is not a server name: {e}")))?;
    let well_known = join(&name_url, ".well-known/matrix/client")?;
    let response = match http.get(well_known).send().await {
        Ok(r) => r,
        Err(_) => return Ok(name_url),
    };
    if !response.status().is_success() {
        return Ok(name_url);
    }
    base_url_from_well_known(&body::read(response, Cap::Other).await?)
}

/// The base URL a `.well-known/matrix/client` document names, refused unless it follows the
/// QR decoder's rule.
pub fn base_url_from_well_known(bytes: &[u8]) -> Result<Url, ClientError> {
    let body: serde_json::Value = parse_json(bytes, ".well-known/matrix/client")?;
    let base = body
        .get("m.homeserver")
        .and_then(|h| h.get("base_url"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            ClientError::Protocol(".well-known/matrix/client has no m.homeserver.base_url".into())
        })?;
    let url = Url::parse(base)
        .map_err(|e| ClientError::Protocol(format!("m.homeserver.base_url: {e}")))?;
    require_secure("well-known base URL", &url)?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_taken_as_they_are() {
        let http = reqwest::Client::new();
        let url = homeserver_base_url(&http, "http://127.0.0.1:8008")
            .await
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8008/");
        assert!(homeserver_base_url(&http, "not a name").await.is_err());
        assert!(homeserver_base_url(&http, "").await.is_err());
    }

    fn well_known(base_url: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "m.homeserver": { "base_url": base_url } }))
            .unwrap()
    }

    #[test]
    fn a_plain_http_well_known_base_url_is_refused() {
        for bad in [
            "http://matrix.example.org",
            "http://192.168.1.1:8008/",
            "ftp://matrix.example.org",
        ] {
            assert!(
                matches!(
                    base_url_from_well_known(&well_known(bad)),
                    Err(ClientError::InsecureUrl { .. })
                ),
                "{bad}"
            );
        }
        for ok in [
            "https://matrix.example.org",
            "http://127.0.0.1:8008",
            "http://localhost:8008",
            "http://[::1]:8008/",
        ] {
            assert_eq!(
                base_url_from_well_known(&well_known(ok)).unwrap(),
                Url::parse(ok).unwrap()
            );
        }
    }
}
