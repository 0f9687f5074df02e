//! The accept loop: HTTP/1.1 connections with a header-read (and idle keep-alive) timeout, a
//! global cap derived from the open-file budget and a per-client-address cap, so that one
//! client holding many sockets cannot make `accept` fail for everyone else (EMFILE).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::ratelimit::client_key;
use crate::sync::lock;

/// Descriptors kept out of the connection budget: stdio, the listeners, the runtime's epoll
/// and wake-up handles, log and database files, outgoing HTTP (Synapse) and slack.
const FIXED_RESERVE: u64 = 64;

/// Per-address cap when none is configured and no trusted proxy header is set: room for a
/// NAT full of people signing in (a sign-in holds 2–4 connections), while one address still
/// gets at most half the budget.
const DEFAULT_PER_ADDRESS: usize = 256;

/// Pause after an accept error other than a per-connection one (EMFILE, ENFILE, ENOBUFS):
/// retrying at once would spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Longest a graceful stop waits for responses in flight (long-polls end at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Raises the open-file soft limit to the hard limit and returns the soft limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The current open-file soft limit (`None` where the platform has none).
fn nofile_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// How many connections may be open at once, overall and per client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub total: usize,
    /// Open connections per client address at most (`usize::MAX`: none).
    pub per_address: usize,
}

impl ConnectionLimits {
    /// Limits from the configuration and an open-file limit: the budget is the limit minus
    /// what the database pools (a connection and its files each) and the process need.
    pub fn new(config: &Config, nofile: Option<u64>) -> Self {
        let pools = u64::from(config.database.max_connections)
            + config.rendezvous_postgres_url().map_or(0, |_| {
                u64::from(config.rendezvous.postgres_max_connections) + 1
            });
        let reserve = FIXED_RESERVE + 3 * pools;
        let budget = nofile.map_or(usize::MAX, |limit| {
            usize::try_from(limit.saturating_sub(reserve).max(16)).unwrap_or(usize::MAX)
        });
        let total = config
            .http
            .max_connections
            .map_or(budget, |n| n.min(budget));
        // One address never gets more than half of the whole by default; an operator's
        // explicit number (or `0`, none) stands, as does a trusted proxy header, behind which
        // every connection comes from the proxy.
        let per_address = match config.http.max_connections_per_address {
            Some(0) => total,
            Some(n) => n.min(total),
            None if config.rate_limit.client_ip_header.is_some() => total,
            None => DEFAULT_PER_ADDRESS.min((total / 2).max(1)),
        };
        Self { total, per_address }
    }

    /// Limits for `config` under the process's open-file limit.
    pub fn for_process(config: &Config) -> Self {
        Self::new(config, nofile_limit())
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One open connection counted against its address; uncounted when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn try_take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = client_key(ip);
        let mut map = lock(&self.0);
        let open = map.entry(key).or_default();
        if *open >= cap {
            if *open == 0 {
                map.remove(&key);
            }
            return None;
        }
        *open += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.table.0);
        if let Some(open) = map.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (the peer gave up):
/// the next accept may succeed at once.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, runs
/// `on_stop` (which ends long-polls) and waits up to [`SHUTDOWN_GRACE`] for open responses.
/// Requests carry `ConnectInfo<SocketAddr>` as with `into_make_service_with_connect_info`.
pub async fn serve_connections(
    app: Router,
    listener: TcpListener,
    limits: ConnectionLimits,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    on_stop: impl FnOnce(),
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timer starts when a connection is accepted and again after each response, so it
    // bounds both a slowly sent request head and an idle keep-alive connection.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.total.min(Semaphore::MAX_PERMITS)));
    let per_address = Arc::new(PerAddress::default());
    let graceful = GracefulShutdown::new();
    let mut refused_logged = false;
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting: past the cap, connections queue in the
        // kernel's backlog instead of failing accept for everyone.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    tracing::warn!(%err, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(address_slot) = per_address.try_take(peer.ip(), limits.per_address) else {
            // Closed at once, freeing the descriptor: this address holds its share already.
            if !refused_logged {
                tracing::warn!(
                    per_address = limits.per_address,
                    "a client address reached its connection cap; closing its new connections"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        tracing::trace!(%peer, "connection accepted");
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::trace!(%peer, "connection closed"),
                Err(err) => tracing::debug!(%peer, %err, "connection ended with an error"),
            }
            drop(address_slot);
            drop(slot);
        });
    }
    drop(listener);
    on_stop();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_for_pools_and_caps_one_address() {
        let config = Config::default();
        let limits = ConnectionLimits::new(&config, Some(256));
        // 256 - (64 + 3 × 16 database connections).
        assert_eq!(limits.total, 144);
        assert_eq!(limits.per_address, 72);
        let tiny = ConnectionLimits::new(&config, Some(100));
        assert_eq!(tiny.total, 16);
        assert_eq!(tiny.per_address, 8);
        assert_eq!(
            ConnectionLimits::new(&config, None).per_address,
            DEFAULT_PER_ADDRESS
        );
        let mut proxied = Config::default();
        proxied.rate_limit.client_ip_header = Some("x-forwarded-for".into());
        let behind = ConnectionLimits::new(&proxied, Some(10_000));
        assert_eq!(behind.per_address, behind.total);
        // `0` is no per-address cap at all: one load generator may use the whole budget.
        let mut uncapped = Config::default();
        uncapped.http.max_connections_per_address = Some(0);
        let all = ConnectionLimits::new(&uncapped, Some(20_000));
        assert_eq!(all.per_address, all.total);
        proxied.http.max_connections = Some(500);
        proxied.http.max_connections_per_address = Some(10);
        assert_eq!(
            ConnectionLimits::new(&proxied, Some(10_000)),
            ConnectionLimits {
                total: 500,
                per_address: 10
            }
        );
    }

    #[test]
    fn address_slots_are_counted_and_released() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let a = table.try_take(ip, 2).unwrap();
        let _b = table.try_take(same_64, 2).unwrap();
        assert!(table.try_take(ip, 2).is_none());
        drop(a);
        assert!(table.try_take(ip, 2).is_some());
    }
}
