//! Rendezvous answers of a hostile server through the client's own parsers: MSC4388 JSON
//! (read, write, create) and MSC4108 (read, write, create, with `ETag`, `Expires` and `Date`
//! headers), then the session deadline the client derives from the lifetime. Never a panic;
//! a created MSC4108 session URL follows the QR decoder's rule (asserted).
//!
//! Input: one byte picks the answer kind, one the status; for MSC4108 the rest is header
//! lines (`Name: value`) up to an empty line, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_client::rendezvous::{Snapshot, WriteOutcome, expiry_after, msc4108, msc4388};

const STATUSES: [u16; 13] = [
    200, 201, 202, 304, 400, 401, 403, 404, 405, 409, 412, 500, 503,
];

fn headers(head: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn lifetime(snap: Option<&Snapshot>) {
    if let Some(d) = snap.and_then(|s| s.expires_in) {
        let _ = expiry_after(d);
    }
}

fn written(outcome: &WriteOutcome) {
    if let WriteOutcome::Written {
        expires_in: Some(d),
        ..
    } = outcome
    {
        let _ = expiry_after(*d);
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, status, rest @ ..] = data else {
        return;
    };
    let status = http::StatusCode::from_u16(STATUSES[usize::from(*status) % STATUSES.len()])
        .expect("listed statuses are valid");
    match kind % 6 {
        0 => lifetime(msc4388::parse_read(status, rest).ok().flatten().as_ref()),
        1 => {
            if let Ok(outcome) = msc4388::parse_write(status, rest) {
                written(&outcome);
            }
        }
        2 => lifetime(
            msc4388::parse_created(status, rest)
                .ok()
                .map(|c| c.1)
                .as_ref(),
        ),
        kind => {
            let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
                Some(i) => (&rest[..i], &rest[i + 2..]),
                None => (rest, &[][..]),
            };
            let headers = headers(head);
            match kind {
                3 => lifetime(
                    msc4108::parse_read(status, &headers, body, "\"seen\"")
                        .ok()
                        .flatten()
                        .as_ref(),
                ),
                4 => {
                    if let Ok(outcome) = msc4108::parse_write(status, &headers, body) {
                        written(&outcome);
                    }
                }
                _ => {
                    if let Ok((url, snap)) = msc4108::parse_created(status, &headers, body) {
                        assert!(mxqr_proto::qr::is_secure_url(&url), "{url}");
                        lifetime(Some(&snap));
                    }
                }
            }
        }
    }
});
