//! `mxqr-bench rendezvous`: drives complete rendezvous conversations against a server on this
//! machine and reports throughput, latency percentiles, errors by status and the server's peak
//! RSS. It refuses non-loopback targets: load tests never leave the machine.
//!
//! One flow is one sign-in's worth of rendezvous traffic, run by a single task playing both
//! devices in turn: create, then `--messages` payloads alternating between the scanner and the
//! generator (each a write and the peer's read), then delete. With the default 7 messages a flow
//! is 16 requests, close to the 15 a real sign-in makes.
//!
//! `mxqr-bench introspect` ([`introspect`]) is Synapse's side of the delegated mode.

mod introspect;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::{Client, RequestBuilder, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "mxqr-bench",
    about = "Load generator for mxqr: the rendezvous, and introspection as Synapse asks (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run rendezvous flows against a server.
    Rendezvous(RendezvousArgs),
    /// Ask a synapse-mode server about a token as Synapse does (`/oauth2/introspect`).
    Introspect(introspect::IntrospectArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    /// JSON with `sequence_token` (`/_matrix/client/v1/rendezvous` unless --prefix says).
    Msc4388,
    /// ETag-based MSC4108 (2024).
    Msc4108,
}

#[derive(clap::Args, Clone)]
struct RendezvousArgs {
    /// Homeserver base URL (loopback only), e.g. http://127.0.0.1:8008.
    #[arg(long)]
    url: String,
    /// Which rendezvous API to exercise.
    #[arg(long, value_enum, default_value = "msc4388")]
    transport: Transport,
    /// Create path; default: the stable MSC4388 prefix or the MSC4108 endpoint.
    #[arg(long)]
    prefix: Option<String>,
    /// Flows to run in total.
    #[arg(long, default_value_t = 1000)]
    flows: u64,
    /// Flows in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Stop starting flows after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Payloads exchanged per flow.
    #[arg(long, default_value_t = 7)]
    messages: u32,
    /// Size of each payload in bytes.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Where the other device talks (reads, then the final delete), e.g. a second instance
    /// on the same PostgreSQL store; default: --url.
    #[arg(long)]
    peer_url: Option<String>,
    /// Process IDs of the servers, to report their peak RSS from /proc (repeatable).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Retry a request answered 503 (the store shedding load) up to this many times, after
    /// its Retry-After, as clients do; retries are counted apart from errors.
    #[arg(long, default_value_t = 0)]
    retry_unavailable: u32,
    /// Pause of a device between its steps, as people and devices take (scanning, typing
    /// the check code): spread over 0.5–1.5× per step, and flows start spread over one pause.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Exit with status 1 unless every flow completed without error.
    #[arg(long)]
    require_success: bool,
}

/// Why a flow stopped early.
#[derive(Debug, thiserror::Error)]
enum FlowError {
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// The request failed below HTTP: `kind` classifies it (timeout, connect, …), `detail`
    /// keeps the whole error chain for the report.
    #[error("transport error ({kind}): {detail}")]
    Io { kind: &'static str, detail: String },
    #[error("unexpected response: {0}")]
    Protocol(&'static str),
}

impl FlowError {
    fn io(err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else if err.is_body() || err.is_decode() {
            "body"
        } else {
            "request"
        };
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            detail.push_str(": ");
            detail.push_str(&inner.to_string());
            source = inner.source();
        }
        Self::Io { kind, detail }
    }

    fn label(&self) -> String {
        match self {
            Self::Status(s) => s.as_u16().to_string(),
            Self::Io { kind, .. } => format!("io-{kind}"),
            Self::Protocol(_) => "protocol".into(),
        }
    }
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// The first error of each label, printed so a failed run says what went wrong.
    examples: BTreeMap<String, String>,
}

struct Runner {
    client: Client,
    args: RendezvousArgs,
    create_url: String,
    base: String,
    /// `base` of the other device's server.
    peer_base: String,
    requests: AtomicU64,
    /// 503 answers retried (`--retry-unavailable`).
    retried: AtomicU64,
}

impl Runner {
    /// Sends one request, recording its latency.
    async fn send(
        &self,
        request: RequestBuilder,
        latencies: &mut Vec<u64>,
    ) -> Result<Response, FlowError> {
        let started = Instant::now();
        let mut request = request;
        let mut retries = 0;
        let response = loop {
            let again = request.try_clone();
            let response = request.send().await.map_err(|e| FlowError::io(&e))?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            // A 503 with Retry-After is the server shedding load; real clients wait and retry.
            match again {
                Some(next)
                    if response.status() == StatusCode::SERVICE_UNAVAILABLE
                        && retries < self.args.retry_unavailable =>
                {
                    let wait = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1);
                    retries += 1;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(wait.clamp(1, 10))).await;
                    request = next;
                }
                _ => break response,
            }
        };
        // What the client experiences: from the first attempt to the final answer.
        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        Ok(response)
    }

    fn payload(&self, flow: u64, message: u32) -> String {
        let stamp = format!("{flow}:{message}:");
        let mut text = stamp.clone();
        while text.len() < self.args.payload_bytes.max(stamp.len()) {
            text.push('A');
        }
        text
    }

    /// Waits a step's pause: a spread over 0.5–1.5× `--think-ms` fixed by flow and step
    /// (step 0, the start, spreads over 0–1×).
    async fn think(&self, flow: u64, step: u64) {
        let think = self.args.think_ms;
        if think == 0 {
            return;
        }
        let spread = flow
            .wrapping_mul(7919)
            .wrapping_add(step.wrapping_mul(104_729))
            % think;
        let ms = if step == 0 {
            spread
        } else {
            think / 2 + spread
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn flow(&self, flow: u64, latencies: &mut Vec<u64>) -> Result<(), FlowError> {
        self.think(flow, 0).await;
        match self.args.transport {
            Transport::Msc4388 => self.flow_msc4388(flow, latencies).await,
            Transport::Msc4108 => self.flow_msc4108(flow, latencies).await,
        }
    }

    /// `url` (under `base`) moved to the peer's server.
    fn peer(&self, url: &str) -> String {
        format!("{}{}", self.peer_base, &url[self.base.len()..])
    }

    async fn json_ok(&self, response: Response) -> Result<Value, FlowError> {
        if response.status() != StatusCode::OK {
            return Err(FlowError::Status(response.status()));
        }
        response
            .json()
            .await
            .map_err(|_| FlowError::Protocol("body is not JSON"))
    }

    async fn flow_msc4388(&self, flow: u64, latencies: &mut Vec<u64>) -> Result<(), FlowError> {
        let created = self
            .send(
                self.client
                    .post(&self.create_url)
                    .json(&json!({ "data": "" })),
                latencies,
            )
            .await?;
        let created = self.json_ok(created).await?;
        let id = created["id"].as_str().ok_or(FlowError::Protocol("no id"))?;
        let session = format!("{}/{id}", self.create_url);
        let peer_session = format!("{}/{id}", self.peer(&self.create_url));
        let mut token = created["sequence_token"]
            .as_str()
            .ok_or(FlowError::Protocol("no sequence_token"))?
            .to_owned();
        for message in 0..self.args.messages {
            self.think(flow, u64::from(message) + 1).await;
            let data = self.payload(flow, message);
            let put = self
                .send(
                    self.client
                        .put(&session)
                        .json(&json!({ "sequence_token": token, "data": data })),
                    latencies,
                )
                .await?;
            let put = self.json_ok(put).await?;
            let written = put["sequence_token"]
                .as_str()
                .ok_or(FlowError::Protocol("no sequence_token"))?;
            let read = self.send(self.client.get(&peer_session), latencies).await?;
            let read = self.json_ok(read).await?;
            if read["sequence_token"] != written || read["data"] != data.as_str() {
                return Err(FlowError::Protocol("peer did not read the write"));
            }
            token = written.to_owned();
        }
        let deleted = self
            .send(self.client.delete(&peer_session), latencies)
            .await?;
        match deleted.status() {
            StatusCode::OK => Ok(()),
            status => Err(FlowError::Status(status)),
        }
    }

    async fn flow_msc4108(&self, flow: u64, latencies: &mut Vec<u64>) -> Result<(), FlowError> {
        let etag_of = |response: &Response| {
            response
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or(FlowError::Protocol("no ETag"))
        };
        let created = self
            .send(
                self.client
                    .post(&self.create_url)
                    .header(header::CONTENT_TYPE, "text/plain")
                    // reqwest omits the length of an empty body; Synapse answers 400 without it.
                    .header(header::CONTENT_LENGTH, "0")
                    .body(""),
                latencies,
            )
            .await?;
        if created.status() != StatusCode::CREATED {
            return Err(FlowError::Status(created.status()));
        }
        let mut etag = etag_of(&created)?;
        let body: Value = created
            .json()
            .await
            .map_err(|_| FlowError::Protocol("body is not JSON"))?;
        let url = body["url"].as_str().ok_or(FlowError::Protocol("no url"))?;
        // The session URL names the advertised host; keep the benchmark on the given base.
        let path = url::Url::parse(url)
            .map_err(|_| FlowError::Protocol("url does not parse"))?
            .path()
            .to_owned();
        let session = format!("{}{path}", self.base);
        let peer_session = format!("{}{path}", self.peer_base);
        for message in 0..self.args.messages {
            self.think(flow, u64::from(message) + 1).await;
            let data = self.payload(flow, message);
            let put = self
                .send(
                    self.client
                        .put(&session)
                        .header(header::IF_MATCH, &etag)
                        .header(header::CONTENT_TYPE, "text/plain")
                        .body(data.clone()),
                    latencies,
                )
                .await?;
            if put.status() != StatusCode::ACCEPTED {
                return Err(FlowError::Status(put.status()));
            }
            let written = etag_of(&put)?;
            let read = self
                .send(
                    self.client
                        .get(&peer_session)
                        .header(header::IF_NONE_MATCH, &etag),
                    latencies,
                )
                .await?;
            if read.status() != StatusCode::OK {
                return Err(FlowError::Status(read.status()));
            }
            if etag_of(&read)? != written {
                return Err(FlowError::Protocol("ETag of read differs from write"));
            }
            let text = read.text().await.map_err(|e| FlowError::io(&e))?;
            if text != data {
                return Err(FlowError::Protocol("peer did not read the write"));
            }
            etag = written;
        }
        let deleted = self
            .send(self.client.delete(&peer_session), latencies)
            .await?;
        match deleted.status() {
            StatusCode::NO_CONTENT => Ok(()),
            status => Err(FlowError::Status(status)),
        }
    }
}

/// Peak and current resident set of a process, in KiB, from /proc.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn run(args: RendezvousArgs) -> Result<(), String> {
    let base_url = url::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    if !is_loopback(&base_url) {
        return Err("--url must be a loopback address (127.0.0.0/8, ::1, localhost)".into());
    }
    if args.concurrency == 0 || args.flows == 0 {
        return Err("--flows and --concurrency must be at least 1".into());
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let peer_base = match &args.peer_url {
        Some(peer) => {
            let parsed = url::Url::parse(peer).map_err(|e| format!("--peer-url: {e}"))?;
            if !is_loopback(&parsed) {
                return Err("--peer-url must be a loopback address".into());
            }
            peer.trim_end_matches('/').to_owned()
        }
        None => base.clone(),
    };
    let prefix = args.prefix.clone().unwrap_or_else(|| {
        match args.transport {
            Transport::Msc4388 => "/_matrix/client/v1/rendezvous",
            Transport::Msc4108 => "/_matrix/client/unstable/org.matrix.msc4108/rendezvous",
        }
        .to_owned()
    });
    let client = Client::builder()
        // Past its pool the PostgreSQL store queues a request for up to 30 s before answering
        // 503; the client outwaits that so the answer, not a timeout, is what is counted.
        .timeout(Duration::from_secs(60))
        // `mxqr serve` closes a keep-alive connection idle for 10 s (`http.header_read_timeout_secs`);
        // a client reusing one at that instant sees it closed under its request. Clients that
        // keep connections shorter than the server never meet that race.
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(usize::try_from(args.concurrency).unwrap_or(usize::MAX))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let runner = Arc::new(Runner {
        client,
        create_url: format!("{base}{prefix}"),
        base,
        peer_base,
        args: args.clone(),
        requests: AtomicU64::new(0),
        retried: AtomicU64::new(0),
    });
    let next_flow = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(args.max_seconds);

    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (runner, next_flow, completed, stats) = (
                runner.clone(),
                next_flow.clone(),
                completed.clone(),
                stats.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut examples: BTreeMap<String, String> = BTreeMap::new();
                loop {
                    let flow = next_flow.fetch_add(1, Ordering::Relaxed);
                    if flow >= runner.args.flows || Instant::now() >= stop_at {
                        break;
                    }
                    match runner.flow(flow, &mut latencies).await {
                        Ok(()) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            let label = err.label();
                            examples
                                .entry(label.clone())
                                .or_insert_with(|| err.to_string());
                            *errors.entry(label).or_default() += 1;
                        }
                    }
                }
                let mut stats = stats.lock().await;
                stats.latencies_us.append(&mut latencies);
                for (label, count) in errors {
                    *stats.errors.entry(label).or_default() += count;
                }
                for (label, example) in examples {
                    stats.examples.entry(label).or_insert(example);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| format!("worker failed: {e}"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut stats = stats.lock().await;
    stats.latencies_us.sort_unstable();
    let flows = completed.load(Ordering::Relaxed);
    let requests = runner.requests.load(Ordering::Relaxed);
    println!("transport        {:?}", args.transport);
    println!("concurrency      {}", args.concurrency);
    println!("elapsed_s        {elapsed:.2}");
    println!("flows_ok         {flows}");
    println!("flows_per_s      {:.1}", flows as f64 / elapsed);
    println!("requests         {requests}");
    println!("requests_per_s   {:.1}", requests as f64 / elapsed);
    println!(
        "retried_503      {}",
        runner.retried.load(Ordering::Relaxed)
    );
    println!(
        "latency_p50_ms   {:.2}",
        percentile(&stats.latencies_us, 50.0)
    );
    println!(
        "latency_p99_ms   {:.2}",
        percentile(&stats.latencies_us, 99.0)
    );
    println!(
        "latency_max_ms   {:.2}",
        percentile(&stats.latencies_us, 100.0)
    );
    if stats.errors.is_empty() {
        println!("errors           none");
    }
    for (label, count) in &stats.errors {
        println!(
            "errors[{label}]{:>width$}{count}",
            "",
            width = 6usize.saturating_sub(label.len()) + 1
        );
    }
    for (label, example) in &stats.examples {
        println!("error_example[{label}] {example}");
    }
    for &pid in &args.server_pid {
        match memory_kib(pid) {
            Some((peak, now)) => {
                println!(
                    "server_peak_rss_mib {:.1} (pid {pid})",
                    peak as f64 / 1024.0
                );
                println!("server_rss_mib      {:.1} (pid {pid})", now as f64 / 1024.0);
            }
            None => println!("server_rss         unavailable (no /proc/{pid}/status)"),
        }
    }
    if args.require_success && (flows != args.flows || !stats.errors.is_empty()) {
        return Err(format!(
            "{flows} of {} flows completed, errors: {:?}",
            args.flows, stats.errors
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match command {
        Command::Rendezvous(args) => runtime.block_on(run(args)),
        Command::Introspect(args) => runtime.block_on(introspect::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8008",
            "http://127.5.0.1/",
            "http://[::1]:1/",
            "http://localhost:8008",
        ] {
            assert!(is_loopback(&url::Url::parse(ok).unwrap()), "{ok}");
        }
        for refused in [
            "http://10.0.0.1/",
            "http://example.org/",
            "http://192.168.1.1:8008",
        ] {
            assert!(
                !is_loopback(&url::Url::parse(refused).unwrap()),
                "{refused}"
            );
        }
    }

    #[test]
    fn percentiles_pick_ranks() {
        let sorted: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 50.0), 51.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
