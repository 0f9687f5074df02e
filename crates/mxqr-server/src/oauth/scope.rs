//! Matrix OAuth scopes: `urn:matrix:client:api:*` plus exactly one
//! `urn:matrix:client:device:<id>`, or the MSC2967 spellings that matrix-sdk still sends
//! (`urn:matrix:org.matrix.msc2967.client:…`), never a mix of the two in one request.

const STABLE_API: &str = "urn:matrix:client:api:*";
const STABLE_DEVICE: &str = "urn:matrix:client:device:";
const UNSTABLE_API: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
const UNSTABLE_DEVICE: &str = "urn:matrix:org.matrix.msc2967.client:device:";

/// Longest device ID accepted (the 43-character base64 keys matrix-sdk uses fit easily).
const MAX_DEVICE_ID_LEN: usize = 255;

/// A requested scope the server can grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixScope {
    /// Device the tokens will be bound to.
    pub device_id: String,
    /// The scope as granted (the requested tokens, normalized to single spaces).
    pub granted: String,
}

/// Why a scope cannot be granted (the `error_description` of `invalid_scope`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScopeError(&'static str);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Spelling {
    Stable,
    Unstable,
}

/// RFC 6749 §3.3 scope-token characters (`%x21 / %x23-5B / %x5D-7E`): printable ASCII except
/// space, `"` and `\`. This admits base64 device IDs with `+`, `/` and `=`.
fn scope_token_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

/// Parses and checks a requested `scope`.
pub fn parse(scope: &str) -> Result<MatrixScope, ScopeError> {
    let mut api = None;
    let mut device: Option<(Spelling, &str)> = None;
    let mut tokens: Vec<&str> = Vec::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if !token.bytes().all(scope_token_char) {
            return Err(ScopeError(
                "scope contains characters outside the scope-token grammar",
            ));
        }
        if tokens.contains(&token) {
            continue;
        }
        tokens.push(token);
        let api_spelling = match token {
            STABLE_API => Some(Spelling::Stable),
            UNSTABLE_API => Some(Spelling::Unstable),
            _ => None,
        };
        if let Some(spelling) = api_spelling {
            if api.is_some_and(|seen| seen != spelling) {
                return Err(ScopeError("stable and unstable Matrix scopes are mixed"));
            }
            api = Some(spelling);
        } else if let Some((spelling, id)) = token
            .strip_prefix(STABLE_DEVICE)
            .map(|id| (Spelling::Stable, id))
            .or_else(|| {
                token
                    .strip_prefix(UNSTABLE_DEVICE)
                    .map(|id| (Spelling::Unstable, id))
            })
        {
            if device.is_some() {
                return Err(ScopeError("exactly one device scope is allowed"));
            }
            if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
                return Err(ScopeError(
                    "the device ID in the scope is empty or too long",
                ));
            }
            device = Some((spelling, id));
        } else if token != "openid" {
            return Err(ScopeError("unsupported scope requested"));
        }
    }
    if scope.contains(['\t', '\n', '\r']) {
        return Err(ScopeError("scope tokens must be separated by spaces"));
    }
    let Some(api) = api else {
        return Err(ScopeError("the scope must include urn:matrix:client:api:*"));
    };
    let Some((device_spelling, device_id)) = device else {
        return Err(ScopeError(
            "the scope must include one urn:matrix:client:device:<id>",
        ));
    };
    if api != device_spelling {
        return Err(ScopeError("stable and unstable Matrix scopes are mixed"));
    }
    Ok(MatrixScope {
        device_id: device_id.to_owned(),
        granted: tokens.join(" "),
    })
}

/// Whether a granted scope gives access to the client-server API.
pub fn grants_client_api(scope: &str) -> bool {
    scope
        .split(' ')
        .any(|t| t == STABLE_API || t == UNSTABLE_API)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_unstable_accepted_alone() {
        let s = parse("urn:matrix:client:api:* urn:matrix:client:device:ABCDEF").unwrap();
        assert_eq!(s.device_id, "ABCDEF");
        let key = "abc+def/ghi=";
        let s = parse(&format!(
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:{key}"
        ))
        .unwrap();
        assert_eq!(s.device_id, key);
        assert!(grants_client_api(&s.granted));
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "urn:matrix:client:api:*",
            "urn:matrix:client:device:A",
            "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B",
            "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:device:A",
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:client:api:* urn:matrix:client:device:A",
            "urn:matrix:client:api:* urn:matrix:client:device:",
            "urn:matrix:client:api:* urn:matrix:client:device:a\"b",
            "urn:matrix:client:api:* urn:matrix:client:device:A urn:synapse:admin:*",
            "urn:matrix:client:api:*\turn:matrix:client:device:A",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
