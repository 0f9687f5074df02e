//! Request URLs: a base URL, fixed path segments, then segments a peer or a server chose.
//!
//! A device ID, a backup version or a rendezvous ID put into a path by string joining can
//! leave its place: `..` climbs a level (a lookup of device `..` became
//! `GET /_matrix/client/v3/`), `/`, `?` and `#` start new parts of the URL. Here each
//! variable segment is pushed whole, percent-encoded (`/` as `%2F`, `%` as `%25`), and the
//! dot segments, which the URL standard removes even when percent-encoded, are refused.

use url::Url;

/// Why a value cannot be a path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("`{0}` cannot be a path segment")]
    DotSegment(&'static str),
    #[error("an empty value cannot be a path segment")]
    Empty,
    #[error("`{0}` cannot have a path appended")]
    NotABase(String),
}

/// `base` with the `/`-separated `fixed` path, then each of `variable` as one segment, and no
/// query or fragment. A trailing `/` of `base` is optional: `https://hs/matrix` and
/// `https://hs/matrix/` both give `https://hs/matrix/<fixed>/…`.
pub(crate) fn endpoint(base: &Url, fixed: &str, variable: &[&str]) -> Result<Url, PathError> {
    for segment in variable {
        match *segment {
            "" => return Err(PathError::Empty),
            "." => return Err(PathError::DotSegment(".")),
            ".." => return Err(PathError::DotSegment("..")),
            _ => {}
        }
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| PathError::NotABase(base.to_string()))?;
        segments.pop_if_empty();
        segments.extend(fixed.split('/').filter(|s| !s.is_empty()));
        segments.extend(variable);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn segments_stay_in_their_place() {
        let hs = base("https://hs.example/");
        let device = |id: &str| endpoint(&hs, "_matrix/client/v3/devices", &[id]);
        assert_eq!(
            device("wMMTDKJ5/tG+c8Ie2XyHcD8eWg").unwrap().as_str(),
            "https://hs.example/_matrix/client/v3/devices/wMMTDKJ5%2FtG+c8Ie2XyHcD8eWg"
        );
        for (id, encoded) in [
            ("%2e%2e", "%252e%252e"),
            ("a?b", "a%3Fb"),
            ("a#b", "a%23b"),
            ("../..", "..%2F.."),
        ] {
            assert_eq!(
                device(id).unwrap().as_str(),
                format!("https://hs.example/_matrix/client/v3/devices/{encoded}"),
                "{id}"
            );
        }
        assert_eq!(device(".."), Err(PathError::DotSegment("..")));
        assert_eq!(device("."), Err(PathError::DotSegment(".")));
        assert_eq!(device(""), Err(PathError::Empty));
    }

    #[test]
    fn the_base_path_is_kept_with_or_without_its_slash() {
        for hs in [
            "https://hs.example/matrix",
            "https://hs.example/matrix/?x=1#f",
        ] {
            assert_eq!(
                endpoint(&base(hs), "_matrix/client/versions", &[])
                    .unwrap()
                    .as_str(),
                "https://hs.example/matrix/_matrix/client/versions"
            );
        }
        assert!(matches!(
            endpoint(&base("mailto:a@b"), "x", &[]),
            Err(PathError::NotABase(_))
        ));
    }
}
