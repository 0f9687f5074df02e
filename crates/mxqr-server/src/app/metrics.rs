//! Prometheus text exposition, hand-rolled: a handful of series does not justify a registry.
//!
//! Route labels are route templates (`/…/rendezvous/{id}`), never concrete paths: session IDs
//! are secrets and would explode cardinality.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::rendezvous::store::{StoreStats, Transport};
use crate::sync::lock;

/// Upper bounds (seconds) of the latency histogram buckets; long-polls land in the top ones.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Series {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// Request counters and latency histograms.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut series = lock(&self.series);
        *series
            .requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let histogram = match series.latency.get_mut(route) {
            Some(h) => h,
            None => series.latency.entry(route.to_owned()).or_default(),
        };
        histogram.count += 1;
        histogram.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            histogram.counts[i] += 1;
        }
    }

    /// The exposition text, including the store's session counters.
    pub fn render(&self, stats: &StoreStats) -> String {
        let mut out = String::with_capacity(4096);
        let sessions: [(&str, &str, &str, &[u64; 2]); 5] = [
            (
                "mxqr_rendezvous_sessions_live",
                "gauge",
                "Live rendezvous sessions.",
                &stats.live,
            ),
            (
                "mxqr_rendezvous_sessions_created_total",
                "counter",
                "Rendezvous sessions created.",
                &stats.created,
            ),
            (
                "mxqr_rendezvous_sessions_expired_total",
                "counter",
                "Rendezvous sessions that expired.",
                &stats.expired,
            ),
            (
                "mxqr_rendezvous_sessions_evicted_total",
                "counter",
                "Rendezvous sessions evicted by the live-session cap.",
                &stats.evicted,
            ),
            (
                "mxqr_rendezvous_sessions_deleted_total",
                "counter",
                "Rendezvous sessions deleted by a client.",
                &stats.deleted,
            ),
        ];
        // Writing to a String cannot fail.
        for (name, kind, help, values) in sessions {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for transport in Transport::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{transport=\"{}\"}} {}",
                    transport.label(),
                    values[transport.index()]
                );
            }
        }
        let series = lock(&self.series);
        let _ = writeln!(
            out,
            "# HELP mxqr_http_requests_total HTTP requests by route template, method and status.\n# TYPE mxqr_http_requests_total counter"
        );
        for ((route, method, status), count) in &series.requests {
            let _ = writeln!(
                out,
                "mxqr_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {count}",
                escape(route),
                escape(method)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mxqr_http_request_duration_seconds HTTP request latency by route template (long-polls included).\n# TYPE mxqr_http_request_duration_seconds histogram"
        );
        for (route, h) in &series.latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "mxqr_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "mxqr_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\nmxqr_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\nmxqr_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("/health", "GET", 200, Duration::from_micros(300));
        metrics.record("/health", "GET", 200, Duration::from_millis(20));
        metrics.record("/health", "POST", 405, Duration::from_secs(40));
        let stats = StoreStats {
            live: [3, 1],
            ..StoreStats::default()
        };
        let text = metrics.render(&stats);
        assert!(text.contains("mxqr_rendezvous_sessions_live{transport=\"msc4388\"} 3"));
        assert!(text.contains("mxqr_rendezvous_sessions_live{transport=\"msc4108\"} 1"));
        assert!(text.contains(
            "mxqr_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "mxqr_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "mxqr_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.025\"} 2"
        ));
        assert!(
            text.contains(
                "mxqr_http_request_duration_seconds_bucket{route=\"/health\",le=\"30\"} 2"
            )
        );
        assert!(text.contains(
            "mxqr_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("mxqr_http_request_duration_seconds_count{route=\"/health\"} 3"));
    }
}
