//! Memory budget of the in-memory store: one million live sessions of a 100-byte payload must
//! fit in well under 1 GiB. Its own test binary, so the process RSS measures only this.

use std::sync::Arc;
use std::time::Duration;

use mxqr_testkit::api::rendezvous::store::{MemoryStore, SessionLimits, Transport};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

#[tokio::test(flavor = "current_thread")]
async fn a_million_sessions_of_100_bytes_fit_in_well_under_a_gibibyte() {
    const SESSIONS: u64 = 1_000_000;
    let store = MemoryStore::new(SessionLimits {
        ttl: Duration::from_secs(300),
        renew_on_write: true,
        max_lifetime: Duration::from_secs(600),
        max_sessions: SESSIONS as usize,
        max_total_bytes: usize::MAX,
        protect_written_within: mxqr_testkit::api::rendezvous::store::PROTECT_WRITTEN_WITHIN,
    });
    let before = rss_bytes();
    for i in 0..SESSIONS {
        // Distinct payloads, as real ones are (no sharing of one allocation).
        let data: Arc<str> = Arc::from(format!("{i:0>100}"));
        store.create(Transport::Msc4388, data).unwrap();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(store.stats().live[0], SESSIONS);
    let per_session = grown / SESSIONS;
    eprintln!(
        "RSS grew {} MiB, {per_session} bytes per session",
        grown >> 20
    );
    assert!(grown < 700 << 20, "{} MiB for 1M sessions", grown >> 20);
}
