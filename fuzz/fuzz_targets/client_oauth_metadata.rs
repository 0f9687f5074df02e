//! OAuth server metadata of a hostile server through the client's parser: never a panic, and
//! accepted metadata has an https (or loopback http) issuer and endpoints (asserted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxqr_client::oauth::AuthMetadata;
use mxqr_proto::qr::is_secure_url;

fuzz_target!(|data: &[u8]| {
    let Ok(metadata) = AuthMetadata::from_json(data) else {
        return;
    };
    let issuer = url::Url::parse(&metadata.issuer).expect("accepted issuers are URLs");
    for url in [
        Some(&issuer),
        Some(&metadata.authorization_endpoint),
        Some(&metadata.token_endpoint),
        metadata.registration_endpoint.as_ref(),
        metadata.revocation_endpoint.as_ref(),
        metadata.device_authorization_endpoint.as_ref(),
        metadata.account_management_uri.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(is_secure_url(url), "{url}");
    }
});
