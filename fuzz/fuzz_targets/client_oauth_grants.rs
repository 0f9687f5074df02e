//! Token-endpoint and device-authorization answers of a hostile server through the client's
//! parsers: the device authorization answer, token answers, the meaning of a device-grant
//! poll answer and OAuth/Matrix error bodies. Never a panic; an accepted grant's lifetime and
//! interval are within the poller's bounds (asserted).
//!
//! Input: one byte picks the answer kind, one the status, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_client::ClientError;
use mxqr_client::oauth::{self, DeviceAuthorization, Tokens};

const STATUSES: [u16; 8] = [200, 201, 400, 401, 403, 429, 500, 503];

fuzz_target!(|data: &[u8]| {
    let [kind, status, body @ ..] = data else {
        return;
    };
    let status = http::StatusCode::from_u16(STATUSES[usize::from(*status) % STATUSES.len()])
        .expect("listed statuses are valid");
    match kind % 5 {
        0 => {
            if let Ok(grant) = DeviceAuthorization::from_json(body) {
                assert!(grant.lifetime() <= oauth::MAX_GRANT_LIFETIME);
                assert!(
                    (oauth::MIN_POLL_INTERVAL..=oauth::MAX_POLL_INTERVAL)
                        .contains(&grant.poll_interval())
                );
                assert_eq!(grant.lifetime().as_secs(), grant.expires_in);
                assert_eq!(grant.poll_interval().as_secs(), grant.interval);
                let _ = format!("{grant:?}");
            }
        }
        1 => {
            if let Ok(tokens) = Tokens::from_json(body) {
                let _ = format!("{tokens:?}");
            }
        }
        2 => {
            let _ = oauth::poll_outcome(status, body);
        }
        3 => {
            let _ = oauth::error_from_body(status, body).to_string();
        }
        _ => {
            let _ = ClientError::from_error_body(status, body).to_string();
        }
    }
});
