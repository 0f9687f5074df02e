//! Which consent pages the existing device agrees to open (docs/protocol.md §5, step 3).
//!
//! The new device names the page in `m.login.protocol`, but until the grant succeeds it is a
//! stranger: a hostile one could name a look-alike of the account's sign-in page, or a
//! `javascript:` or `file:` URI, and the existing device, the person's trusted app, would
//! open it. An honest new device got the page from the OAuth server of the existing
//! device's own homeserver, through its `device_authorization_endpoint`; so only pages of
//! that endpoint's origin are opened. The origin is data the driver supplies: it reads the
//! homeserver's `auth_metadata` itself, never trusting the peer for it.

use url::{Origin, Url};

use crate::qr::is_loopback;

/// The origin of the device authorization endpoint of the existing device's own
/// homeserver: the only origin whose consent pages it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentOrigin {
    origin: Origin,
}

/// Why a device authorization endpoint cannot anchor the consent page check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentOriginError {
    #[error(
        "the homeserver's device authorization endpoint must use https (plain http only on loopback)"
    )]
    Insecure,
}

/// Why a consent page named by the new device is refused.
///
/// No variant quotes the page: it comes from the peer, and whoever prints the error should
/// not print attacker-chosen text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedConsentPage {
    #[error("the consent page named by the new device is not a URL")]
    NotAUrl,
    #[error("the consent page named by the new device does not use https")]
    Insecure,
    #[error("the consent page named by the new device carries credentials")]
    Credentials,
    #[error("the consent page named by the new device is not on {expected}")]
    OtherOrigin {
        /// The trusted origin, from this device's own homeserver.
        expected: String,
    },
}

impl ConsentOrigin {
    /// The origin of `endpoint`, the `device_authorization_endpoint` of the existing device's
    /// own homeserver.
    pub fn of_endpoint(endpoint: &Url) -> Result<Self, ConsentOriginError> {
        if !is_secure(endpoint) {
            return Err(ConsentOriginError::Insecure);
        }
        Ok(Self {
            origin: endpoint.origin(),
        })
    }

    /// The origin as `scheme://host[:port]`.
    pub fn as_string(&self) -> String {
        self.origin.ascii_serialization()
    }

    /// Accepts `uri` only if it is an https URL (http only on loopback) of this origin,
    /// without credentials. Returns it parsed: its serialisation is plain ASCII (hosts in
    /// punycode), so the look-alike tricks of Unicode hosts show.
    pub fn check(&self, uri: &str) -> Result<Url, UntrustedConsentPage> {
        // The URL parser drops tabs and newlines silently; an honest server sends none.
        if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UntrustedConsentPage::NotAUrl);
        }
        let url = Url::parse(uri).map_err(|_| UntrustedConsentPage::NotAUrl)?;
        if !is_secure(&url) {
            return Err(UntrustedConsentPage::Insecure);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UntrustedConsentPage::Credentials);
        }
        if url.origin() != self.origin {
            return Err(UntrustedConsentPage::OtherOrigin {
                expected: self.as_string(),
            });
        }
        Ok(url)
    }
}

/// The QR decoder's rule: https, or plain http on a loopback host.
fn is_secure(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback(url),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(endpoint: &str) -> ConsentOrigin {
        ConsentOrigin::of_endpoint(&Url::parse(endpoint).unwrap()).unwrap()
    }

    #[test]
    fn pages_of_the_endpoint_origin_are_accepted() {
        let trusted = origin("https://account.example.org/oauth2/device");
        for page in [
            "https://account.example.org/link",
            "https://account.example.org/link?code=ABCD-1234",
            "https://ACCOUNT.example.org:443/link",
        ] {
            assert!(trusted.check(page).is_ok(), "{page}");
        }
        let local = origin("http://127.0.0.1:8008/oauth2/device");
        assert!(local.check("http://127.0.0.1:8008/link?code=X").is_ok());
    }

    #[test]
    fn anything_else_is_refused() {
        let trusted = origin("https://account.example.org/oauth2/device");
        let other = UntrustedConsentPage::OtherOrigin {
            expected: "https://account.example.org".into(),
        };
        for (page, why) in [
            ("https://account.example.org.evil.test/link", other.clone()),
            ("https://evil.test/link", other.clone()),
            ("https://account.example.org:8443/link", other.clone()),
            ("https://xn--ccount-cta.example.org/link", other.clone()),
            ("https://аccount.example.org/link", other),
            (
                "https://account.example.org@evil.test/",
                UntrustedConsentPage::Credentials,
            ),
            (
                "https://user:pw@account.example.org/",
                UntrustedConsentPage::Credentials,
            ),
            (
                "http://account.example.org/link",
                UntrustedConsentPage::Insecure,
            ),
            ("javascript:alert(1)", UntrustedConsentPage::Insecure),
            ("file:///etc/passwd", UntrustedConsentPage::Insecure),
            ("data:text/html,hi", UntrustedConsentPage::Insecure),
            ("/link", UntrustedConsentPage::NotAUrl),
            (
                "https://account.example.org/\u{1b}[2J",
                UntrustedConsentPage::NotAUrl,
            ),
            (
                "https://account.example.org/\nlink",
                UntrustedConsentPage::NotAUrl,
            ),
        ] {
            assert_eq!(trusted.check(page), Err(why), "{page}");
        }
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        let endpoint = Url::parse("http://account.example.org/oauth2/device").unwrap();
        assert_eq!(
            ConsentOrigin::of_endpoint(&endpoint),
            Err(ConsentOriginError::Insecure)
        );
        let local = origin("http://localhost:8008/oauth2/device");
        assert_eq!(
            local.check("http://localhost:8009/link"),
            Err(UntrustedConsentPage::OtherOrigin {
                expected: "http://localhost:8008".into()
            })
        );
    }
}
