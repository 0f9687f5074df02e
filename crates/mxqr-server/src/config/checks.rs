//! Checks shared by the tables' `validate`, so that the same rule reads the same everywhere.

use std::ops::RangeInclusive;

/// `key` must lie within `range`; the message names the key and the bounds.
pub(super) fn check_range(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<(), String> {
    if range.contains(&value) {
        return Ok(());
    }
    let (start, end) = range.into_inner();
    Err(format!("{key} must be within {start}..={end}, got {value}"))
}

/// `url`, when `key` is set, must name PostgreSQL.
pub(super) fn check_postgres_url(key: &str, url: Option<&str>) -> Result<(), String> {
    match url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            Err(format!("{key} must start with postgres://"))
        }
        _ => Ok(()),
    }
}

/// Whether `url` is an absolute http(s) URL with a host.
pub(super) fn is_http_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}
