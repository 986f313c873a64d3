//! `awooop bench gateway`: what the MCP gateway adds to a tool call.
//!
//! The same `tools/call` (a `blob` of 1 KiB, then 16 KiB) is sent to a minimal Rust MCP server
//! (`gateway::upstream::fixture`) directly, and through the gateway's `/mcp` endpoint with
//! everything on: caller-token authentication, the five gates, argument validation, credential
//! resolution and injection (a Bearer header the upstream checks), redaction and truncation of
//! the result, and the batched call audit into PostgreSQL.
//!
//! * Latency: open loop at a fixed rate (~1,000 and ~3,000 calls/s); each call's latency counts
//!   from its scheduled start, so a stalled server is not hidden by a stalled client.
//!   Overhead = gateway percentile − direct percentile. The calls are released by a thread
//!   with nanosecond sleeps ([`schedule`]), not the runtime's 1 ms timer. The two paths run in ABBA order
//!   (direct, gateway, gateway, direct), so neither always goes first.
//! * Saturation: closed loop (fixed concurrency), calls/s through the gateway ÷ calls/s direct;
//!   the upstream client alone runs as long as the other two, in rotating order, and its
//!   failed calls count as errors like theirs (any error fails the benchmark).
//! * The hop alone: the same closed loop through a bare relay ([`relay`]: the same HTTP server
//!   and client stacks as the gateway, axum in and reqwest out, forwarding bytes and headers
//!   and doing nothing else). `relay_ratio` is the ceiling of any gateway that is one extra
//!   HTTP hop in this harness: what the gateway's own work is measured against.
//!
//! Everything (load generator, gateway, upstream) runs in this one process on this machine's
//! cores, like a sidecar deployment; the direct baseline pays the same client costs. With
//! `--upstream URL` the upstream is an external MCP server process instead (e.g.
//! `awooop mcp-fixture --listen 127.0.0.1:18090`, URL `http://127.0.0.1:18090/mcp`), so the
//! upstream's own work leaves this process; `scripts/bench-gateway-wrk.sh` takes the load
//! generator out too (wrk against `awooop up`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{drop_scratch, percentile_ms, scratch_database};
use crate::auth::Actor;
use crate::config::BenchArgs;
use crate::contracts::ContractKind;
use crate::gateway::audit::CallAudit;
use crate::gateway::credentials::{CredentialResolver, LocalPolicy, MemorySecrets};
use crate::gateway::keys::GatewayKeys;
use crate::gateway::upstream::{UpstreamConfig, Upstreams};
use crate::gateway::{Gateway, GatewayConfig, tokens};
use crate::tenancy::{self, ProjectId};
use awooop_testkit::fixture::{FixtureOptions, FixtureServer};

const MASTER: &str = "bench-gateway-master-key-0123456789abcdef";
const SECRET: &str = "bench-upstream-secret-7f3a9c";
/// Open-loop cap on calls in flight (keeps file descriptors bounded when a path saturates).
const MAX_IN_FLIGHT: usize = 256;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let base = args
        .db
        .database_url
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let flush = audit_flush_interval(
        std::env::var("AWOOOP_GATEWAY_AUDIT_FLUSH_MS")
            .ok()
            .as_deref(),
    )?;
    let scratch = scratch_database(&base, "gateway").await?;
    let res = bench(&scratch, args.quick, args.upstream.as_deref(), flush).await;
    drop_scratch(&base, &scratch).await;
    let line = res?;
    println!("{line}");
    Ok(())
}

/// The call audit writer's interval for this run: `AWOOOP_GATEWAY_AUDIT_FLUSH_MS`, as the
/// platform's `--gateway-audit-flush-ms` reads it (1–60000), or the platform's default.
fn audit_flush_interval(env: Option<&str>) -> anyhow::Result<Duration> {
    let Some(v) = env else {
        return Ok(crate::gateway::audit::DEFAULT_FLUSH_INTERVAL);
    };
    match v.trim().parse::<u64>() {
        Ok(ms @ 1..=60_000) => Ok(Duration::from_millis(ms)),
        _ => anyhow::bail!("AWOOOP_GATEWAY_AUDIT_FLUSH_MS must be between 1 and 60000, not {v:?}"),
    }
}

/// One HTTP MCP endpoint the load generator talks to (session set up once).
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    tool: &'static str,
    /// `tools/call`s sent to this target, by every clone of it (the gateway's must all be
    /// audited).
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Target {
    async fn connect(url: &str, bearer: &str, tool: &'static str) -> anyhow::Result<Self> {
        use reqwest::header::{HeaderMap, HeaderValue};
        let client = Self::client()?;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {bearer}"))?,
        );
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "awooop-bench", "version": "1"}}});
        let resp = client
            .post(url)
            .headers(headers.clone())
            .body(init.to_string())
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "initialize at {url}: HTTP {}",
            resp.status()
        );
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no session id from {url}"))?;
        let version = resp.json::<Value>().await?["result"]["protocolVersion"]
            .as_str()
            .unwrap_or("2025-11-25")
            .to_string();
        headers.insert("mcp-session-id", sid);
        headers.insert("mcp-protocol-version", HeaderValue::from_str(&version)?);
        let t = Self {
            client,
            url: url.to_string(),
            headers,
            tool,
            sent: Arc::default(),
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        t.client
            .post(&t.url)
            .headers(t.headers.clone())
            .body(note.to_string())
            .send()
            .await?;
        Ok(t)
    }

    fn client() -> anyhow::Result<reqwest::Client> {
        crate::tls::install_crypto_provider();
        Ok(reqwest::Client::builder()
            .tcp_nodelay(true)
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .build()?)
    }

    /// The same target (session, headers) with a client of its own: its connections are
    /// driven by the runtime that first uses them.
    fn with_own_client(&self) -> anyhow::Result<Self> {
        Ok(Self {
            client: Self::client()?,
            ..self.clone()
        })
    }

    /// One call; checks that the result is a successful `blob` of `size` characters.
    async fn call(&self, size: usize) -> anyhow::Result<()> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}","arguments":{{"size":{size}}}}}}}"#,
            self.tool
        );
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await?;
        let v: Value = resp.json().await?;
        let text = v["result"]["content"][0]["text"].as_str().unwrap_or("");
        anyhow::ensure!(
            v["result"]["isError"] != true && text.len() == size,
            "unexpected result: {}",
            v.to_string().chars().take(300).collect::<String>()
        );
        Ok(())
    }
}

/// The schedule of an open loop: `n` instants `interval` apart, each sent when it comes, by a
/// thread of its own.
///
/// Why not `tokio::time::sleep_until`: the runtime's timer wheel has a 1 ms resolution, so it
/// released the calls in bursts (at 3,000 calls/s three at once every millisecond, at 1,000
/// calls/s each up to a millisecond late), and since a call counts from its scheduled instant,
/// the bursts' queueing and the lateness were measured as latency of whichever path ran: the
/// direct p50 read 1.1–1.3 ms for a call that takes a tenth of that. `std::thread::sleep` is
/// a nanosleep, late by the timer slack and the wake-up of a runtime thread, alike for every
/// path; that lateness is reported (`pacer_lag_p99_ms`), not hidden.
fn schedule(n: usize, interval: Duration) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(10);
        for i in 0..n {
            let at = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(at).is_err() {
                return;
            }
        }
    });
    rx
}

/// What an open loop measured: latencies from each call's scheduled instant (sorted), how late
/// each call started (sorted), failed calls.
struct OpenLoop {
    latencies: Vec<Duration>,
    lags: Vec<Duration>,
    errors: usize,
}

/// Open loop: `rate` calls/s for `dur`, paced by [`schedule`], sent from a runtime of its own.
///
/// Why its own runtime: sharing the benchmark's runtime with the gateway and the upstream, a
/// scheduled call was a task injected from the pacer's thread, and a busy multi-threaded
/// runtime takes injected tasks only between batches of its local ones, so at 3,000 calls/s
/// the calls through the gateway started 3 ms late at p99 (0.6 ms for the direct ones): the
/// load generator queued behind the work it measures, which an external client does not.
/// A current-thread runtime on its own thread (and its own connections) is such a client.
async fn open_loop(t: &Target, size: usize, rate: u32, dur: Duration) -> OpenLoop {
    let t = t.clone();
    let run = move || -> anyhow::Result<OpenLoop> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let t = t.with_own_client()?;
            // Connections first (a handful, as the loop will have in flight), outside the clock.
            let warm: Vec<_> = (0..8).map(|_| t.call(size)).collect();
            futures::future::try_join_all(warm).await?;
            Ok(open_loop_here(&t, size, rate, dur).await)
        })
    };
    let failed = match tokio::task::spawn_blocking(run).await {
        Ok(Ok(o)) => return o,
        Ok(Err(e)) => e,
        Err(e) => anyhow::anyhow!(e),
    };
    // A load generator that could not start counts every call it would have sent as failed
    // (which fails the benchmark).
    eprintln!("  open loop at {rate}/s could not start: {failed:#}");
    OpenLoop {
        latencies: Vec::new(),
        lags: Vec::new(),
        errors: (rate as f64 * dur.as_secs_f64()).max(1.0) as usize,
    }
}

/// [`open_loop`]'s body, on the current runtime.
async fn open_loop_here(t: &Target, size: usize, rate: u32, dur: Duration) -> OpenLoop {
    let n = (rate as f64 * dur.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // At most this many calls in flight (connections, file descriptors); beyond it a call
    // waits for a slot, and that wait counts in its latency (it is scheduled, not sent).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = Vec::with_capacity(n);
    let mut due = schedule(n, interval);
    while let Some(at) = due.recv().await {
        let t = t.clone();
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let lag = at.elapsed();
            let _slot = slots.acquire_owned().await;
            let ok = t.call(size).await.is_ok();
            (at.elapsed(), lag, ok)
        }));
    }
    let mut out = OpenLoop {
        latencies: Vec::with_capacity(n),
        lags: Vec::with_capacity(n),
        errors: 0,
    };
    for task in tasks {
        match task.await {
            Ok((d, lag, true)) => {
                out.latencies.push(d);
                out.lags.push(lag);
            }
            _ => out.errors += 1,
        }
    }
    out.latencies.sort();
    out.lags.sort();
    out
}

/// Closed loop: `conc` callers back to back for `dur`; calls per second.
async fn closed_loop(t: &Target, size: usize, conc: usize, dur: Duration) -> (f64, usize) {
    let until = Instant::now() + dur;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err) = (0usize, 0usize);
            while Instant::now() < until {
                match t.call(size).await {
                    Ok(()) => ok += 1,
                    Err(_) => err += 1,
                }
            }
            (ok, err)
        }));
    }
    let (mut ok, mut err) = (0, 0);
    for task in tasks {
        if let Ok((o, e)) = task.await {
            ok += o;
            err += e;
        }
    }
    (ok as f64 / started.elapsed().as_secs_f64(), err)
}

/// Closed loop through the upstream client alone (no gateway): what `Upstreams` itself costs.
/// Calls per second, and errors (a failed call is counted, never silently dropped).
async fn client_loop(
    up: &Upstreams,
    provider: &crate::contracts::McpProvider,
    size: usize,
    conc: usize,
    dur: Duration,
) -> (f64, usize) {
    use crate::gateway::upstream::{CallRequest, Injected};
    let until = Instant::now() + dur;
    let started = Instant::now();
    let project = ProjectId::parse("bench").expect("project id");
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (up, provider, project) = (up.clone(), provider.clone(), project.clone());
        tasks.push(tokio::spawn(async move {
            let creds = [Injected {
                inject: crate::contracts::Injection::Header {
                    name: "Authorization".into(),
                    prefix: "Bearer ".into(),
                },
                value: SECRET.into(),
            }];
            let mut args = serde_json::Map::new();
            args.insert("size".into(), json!(size));
            let (mut ok, mut err) = (0usize, 0usize);
            while Instant::now() < until {
                let r = up
                    .call_tool(CallRequest {
                        project: &project,
                        provider: &provider,
                        tool: "blob",
                        arguments: &args,
                        credentials: &creds,
                        traceparent: None,
                        idempotency_key: None,
                        timeout: Duration::from_secs(10),
                    })
                    .await;
                // The same check as `Target::call`: a successful blob of `size` characters.
                let good = r.as_ref().is_ok_and(|v| {
                    v["isError"] != true
                        && v["content"][0]["text"].as_str().map(str::len) == Some(size)
                });
                if good {
                    ok += 1;
                } else {
                    err += 1;
                }
            }
            (ok, err)
        }));
    }
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        match t.await {
            Ok((o, e)) => {
                ok += o;
                err += e;
            }
            Err(_) => err += 1,
        }
    }
    (ok as f64 / started.elapsed().as_secs_f64(), err)
}

/// A bare HTTP relay: every POST to `/mcp` is forwarded to `upstream` with its headers and
/// body, and the upstream's status, headers and body are returned unchanged. No
/// authentication, no parsing, no audit: one extra hop through the same server (axum) and
/// client (reqwest, keep-alive, `TCP_NODELAY`) stacks the gateway uses, nothing more.
pub(crate) mod relay {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};

    #[derive(Clone)]
    struct Relay {
        client: reqwest::Client,
        upstream: String,
    }

    /// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), and
    /// the ones the client library sets itself.
    fn hop_by_hop(name: &header::HeaderName) -> bool {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-connection"
                | "host"
                | "content-length"
        )
    }

    async fn forward(State(r): State<Relay>, headers: HeaderMap, body: Bytes) -> Response {
        let mut out = HeaderMap::with_capacity(headers.len());
        for (k, v) in &headers {
            if !hop_by_hop(k) {
                out.append(k.clone(), v.clone());
            }
        }
        let resp = match r
            .client
            .post(&r.upstream)
            .headers(out)
            .body(body)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        };
        let status = resp.status();
        let mut back = HeaderMap::with_capacity(resp.headers().len());
        for (k, v) in resp.headers() {
            if !hop_by_hop(k) {
                back.append(k.clone(), v.clone());
            }
        }
        match resp.bytes().await {
            Ok(b) => (status, back, b).into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    }

    /// Serve the relay to `upstream` on `listener` until `stop` resolves.
    pub async fn serve(
        listener: tokio::net::TcpListener,
        upstream: String,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(std::io::Error::other)?;
        let app = axum::Router::new()
            .route("/mcp", axum::routing::post(forward))
            .with_state(Relay { client, upstream });
        axum::serve(crate::http::nodelay(listener), app)
            .with_graceful_shutdown(stop)
            .await
    }
}

struct Figures {
    p50: [f64; 2],
    p99: [f64; 2],
    direct_p50: f64,
    direct_p99: f64,
    direct_rps: f64,
    gateway_rps: f64,
    client_rps: f64,
    relay_rps: f64,
    /// The worst p99 of the calls' start lag behind their schedule ([`schedule`]).
    lag_p99: f64,
    errors: usize,
}

async fn measure(
    direct: &Target,
    gw: &Target,
    relay: &Target,
    client: (&Upstreams, &crate::contracts::McpProvider),
    size: usize,
    quick: bool,
) -> anyhow::Result<Figures> {
    let (dur, sat) = if quick {
        (Duration::from_millis(1500), Duration::from_millis(1500))
    } else {
        (Duration::from_secs(10), Duration::from_secs(5))
    };
    // Warm up the paths (connections, caches, session state).
    for t in [direct, gw, relay] {
        closed_loop(t, size, 16, Duration::from_millis(300)).await;
    }
    let mut f = Figures {
        p50: [0.0; 2],
        p99: [0.0; 2],
        direct_p50: 0.0,
        direct_p99: 0.0,
        direct_rps: 0.0,
        gateway_rps: 0.0,
        client_rps: 0.0,
        relay_rps: 0.0,
        lag_p99: 0.0,
        errors: 0,
    };
    // Each figure is taken in ABBA order (direct, gateway, gateway, direct; each half the
    // time), so neither path always runs first, on a cooler or warmer machine.
    for (i, rate) in [1000u32, 3000].into_iter().enumerate() {
        let (mut d, mut g, mut de, mut ge) = (Vec::new(), Vec::new(), 0, 0);
        let (mut dlags, mut glags) = (Vec::new(), Vec::new());
        for first_direct in [true, false] {
            for is_direct in [first_direct, !first_direct] {
                let o = open_loop(if is_direct { direct } else { gw }, size, rate, dur / 2).await;
                if is_direct {
                    d.extend(o.latencies);
                    dlags.extend(o.lags);
                    de += o.errors;
                } else {
                    g.extend(o.latencies);
                    glags.extend(o.lags);
                    ge += o.errors;
                }
            }
        }
        d.sort();
        g.sort();
        dlags.sort();
        glags.sort();
        let mut lags: Vec<Duration> = dlags.iter().chain(&glags).copied().collect();
        lags.sort();
        f.errors += de + ge;
        f.p50[i] = percentile_ms(&g, 50.0) - percentile_ms(&d, 50.0);
        f.p99[i] = percentile_ms(&g, 99.0) - percentile_ms(&d, 99.0);
        f.lag_p99 = f.lag_p99.max(percentile_ms(&lags, 99.0));
        eprintln!(
            "  {size} B @ {rate}/s: direct p50 {:.3} p99 {:.3} ms | gateway p50 {:.3} p99 {:.3} ms | start lag p99 direct {:.3} gateway {:.3} ms | errors {}",
            percentile_ms(&d, 50.0),
            percentile_ms(&d, 99.0),
            percentile_ms(&g, 50.0),
            percentile_ms(&g, 99.0),
            percentile_ms(&dlags, 99.0),
            percentile_ms(&glags, 99.0),
            de + ge
        );
        if i == 0 {
            f.direct_p50 = percentile_ms(&d, 50.0);
            f.direct_p99 = percentile_ms(&d, 99.0);
        }
    }
    // Saturation: the four closed loops, each as long as the others, in rotating order
    // (direct, gateway, client, relay; then gateway, client, relay, direct; ...), each rate
    // the mean of its four quarters.
    let (mut drps, mut grps, mut crps, mut rrps, mut errors) = (0.0, 0.0, 0.0, 0.0, [0usize; 4]);
    for round in 0..4 {
        for k in 0..4 {
            match (round + k) % 4 {
                0 => {
                    let (r, e) = closed_loop(direct, size, 32, sat / 4).await;
                    drps += r / 4.0;
                    errors[0] += e;
                }
                1 => {
                    let (r, e) = closed_loop(gw, size, 32, sat / 4).await;
                    grps += r / 4.0;
                    errors[1] += e;
                }
                2 => {
                    let (r, e) = client_loop(client.0, client.1, size, 32, sat / 4).await;
                    crps += r / 4.0;
                    errors[2] += e;
                }
                _ => {
                    let (r, e) = closed_loop(relay, size, 32, sat / 4).await;
                    rrps += r / 4.0;
                    errors[3] += e;
                }
            }
        }
    }
    eprintln!(
        "  {size} B saturation: direct {drps:.0}/s, gateway {grps:.0}/s, upstream client alone {crps:.0}/s, bare relay {rrps:.0}/s, errors direct {} gateway {} client {} relay {}",
        errors[0], errors[1], errors[2], errors[3]
    );
    f.relay_rps = rrps;
    f.client_rps = crps;
    f.direct_rps = drps;
    f.gateway_rps = grps;
    f.errors += errors.iter().sum::<usize>();
    Ok(f)
}

/// The egress policy of the benchmark: loopback, plus the external upstream's host if it is
/// elsewhere (the benchmark's own scratch project only).
fn egress(upstream_url: &str) -> anyhow::Result<awooop_policy::PolicySource> {
    let u = reqwest::Url::parse(upstream_url)
        .map_err(|e| anyhow::anyhow!("--upstream {upstream_url:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some(),
        "--upstream must be an http(s) URL with a host, got {upstream_url:?}"
    );
    let rules = [awooop_policy::egress::EgressRule {
        rule_id: uuid::Uuid::nil(),
        project: Some("bench".into()),
        host: u.host_str().unwrap_or_default().to_string(),
        note: "awooop bench gateway --upstream".into(),
    }];
    Ok(awooop_policy::PolicySource::fixed(Vec::new(), &rules, true))
}

async fn bench(
    url: &str,
    quick: bool,
    upstream: Option<&str>,
    flush: Duration,
) -> anyhow::Result<String> {
    // In process (requires the credential header, so injection is proven on every call), or
    // an external server given by `--upstream` (checked by one call before measuring).
    let (_fx, fx_url) = match upstream {
        Some(u) => (None, u.to_string()),
        None => {
            let fx = FixtureServer::start(FixtureOptions {
                require_header: Some(("authorization".into(), format!("Bearer {SECRET}"))),
                ..Default::default()
            })
            .await?;
            let u = fx.url();
            (Some(fx), u)
        }
    };
    let policy = egress(&fx_url)?;
    let (p, project, state) = super::bench_project(url, "gw", 16).await?;
    let admin = Actor::cli("bench");
    let gateway_body = json!({
        "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": "bench-upstream", "key": "token"}}}],
        "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": fx_url},
                       "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization", "prefix": "Bearer "}}]}],
        "tools": [{"provider": "fx", "name": "blob", "risk": "read_only", "environments": ["dev"],
                   "input_schema": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0, "maximum": 65536}},
                                    "required": ["size"], "additionalProperties": false},
                   "max_result_chars": 65536}],
        "grants": [{"agent": "bench", "tools": ["fx__blob"], "environments": ["dev"]}]
    });
    let agent_body = json!({
        "display_name": "bench", "context_domain": "bench", "tools": ["fx__blob"],
        "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 600},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "done", "template": "ok"}]}
    });
    tenancy::scope(project.clone(), async {
        for (kind, name, body) in [
            (ContractKind::McpGateway, "default", gateway_body),
            (ContractKind::Agent, "bench", agent_body),
        ] {
            let d = p.control.create_draft(&admin, kind, name, body).await?;
            let req = p.control.sign_draft(d.draft.draft_id, "bench").await?;
            let rev = p.control.publish(&admin, d.draft.draft_id, req).await?;
            p.control.approve(&Actor::cli("a"), rev.revision_id).await?;
            p.control.activate(&admin, rev.revision_id).await?;
        }
        Ok::<_, crate::error::Error>(())
    })
    .await?;

    let secrets = Arc::new(MemorySecrets::default());
    secrets.put("bench-upstream", "token", SECRET, Some("bench"));
    let (audit, _writer) = CallAudit::spawn_with(p.control.db().clone(), flush);
    let gateway = Arc::new(Gateway::new(
        p.control.db().clone(),
        p.control.coord().clone(),
        GatewayKeys::derive(MASTER),
        CredentialResolver::new(
            Some(secrets),
            LocalPolicy::default(),
            Duration::from_secs(30),
        ),
        // The fixture listens on 127.0.0.1: allowed explicitly, as `awooop up` does.
        Arc::new(Upstreams::guarded(
            UpstreamConfig::default(),
            policy.clone(),
        )),
        audit,
        GatewayConfig {
            // High enough never to refuse a benchmark call, low enough to stay on (the
            // counting is part of the cost being measured).
            rate_per_minute: u32::MAX / 2,
            ..GatewayConfig::default()
        },
    ));
    let mcp = crate::http::mcp::McpState::new(gateway.clone(), p.control.db().clone(), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            crate::http::nodelay(listener),
            crate::http::mcp::router(mcp),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .await
    });
    let now = chrono::Utc::now().timestamp();
    let token = tokens::mint_run_token(
        &GatewayKeys::derive(MASTER).run_token,
        &tokens::RunTokenClaims {
            project: "bench".into(),
            agent: "bench".into(),
            run_id: None,
            environment: "dev".into(),
            mode: None,
            iat: now,
            exp: now + 3600,
        },
    )?;
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = relay_listener.local_addr()?;
    let (relay_stop, relay_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_server = tokio::spawn(relay::serve(relay_listener, fx_url.clone(), async {
        let _ = relay_stop_rx.await;
    }));
    let direct = Target::connect(&fx_url, SECRET, "blob").await?;
    let through = Target::connect(&format!("http://{gw_addr}/mcp"), &token, "fx__blob").await?;
    let relayed = Target::connect(&format!("http://{relay_addr}/mcp"), SECRET, "blob").await?;
    // One checked call each way before measuring.
    direct.call(1024).await?;
    through.call(1024).await?;
    relayed.call(1024).await?;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "gateway bench (upstream {}; load average before: {})",
        if upstream.is_some() {
            fx_url.as_str()
        } else {
            "in process"
        },
        load.trim()
    );
    let client = Upstreams::guarded(UpstreamConfig::default(), policy);
    let provider: crate::contracts::McpProvider = serde_json::from_value(json!({
        "name": "fx", "transport": {"type": "streamable_http", "url": fx_url}}))?;
    let k1 = measure(
        &direct,
        &through,
        &relayed,
        (&client, &provider),
        1024,
        quick,
    )
    .await?;
    let k16 = measure(
        &direct,
        &through,
        &relayed,
        (&client, &provider),
        16 * 1024,
        quick,
    )
    .await?;
    client.shutdown().await;
    gateway.audit().flush().await;
    // Everything on means every call audited: the rows written must be the calls sent through
    // the gateway (allowed or denied, one row each), or the figures measured less work.
    let audit_rows: i64 = tenancy::scope(project.clone(), async {
        let mut tx = p.control.db().tenant().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mcp_call_audit")
            .fetch_one(&mut *tx)
            .await?;
        Ok::<_, crate::error::Error>(n)
    })
    .await?;
    let gateway_calls = through.sent.load(std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = relay_stop.send(());
    let _ = relay_server.await;
    let _ = std::fs::remove_dir_all(&state);
    anyhow::ensure!(
        k1.errors + k16.errors == 0,
        "{} calls failed during the benchmark",
        k1.errors + k16.errors
    );
    anyhow::ensure!(
        u64::try_from(audit_rows).ok() == Some(gateway_calls),
        "{gateway_calls} calls went through the gateway but {audit_rows} audit rows were written"
    );
    Ok(format!(
        "overhead_p50_ms={:.3} overhead_p99_ms={:.3} overhead_p50_ms_3k={:.3} overhead_p99_ms_3k={:.3} saturation_ratio={:.2} \
         direct_p50_ms={:.3} direct_p99_ms={:.3} direct_calls_per_sec={:.0} gateway_calls_per_sec={:.0} client_calls_per_sec={:.0} \
         overhead_p50_ms_16k={:.3} overhead_p99_ms_16k={:.3} overhead_p50_ms_3k_16k={:.3} overhead_p99_ms_3k_16k={:.3} saturation_ratio_16k={:.2} \
         direct_calls_per_sec_16k={:.0} gateway_calls_per_sec_16k={:.0} \
         relay_ratio={:.2} relay_calls_per_sec={:.0} gateway_to_relay={:.2} relay_ratio_16k={:.2} relay_calls_per_sec_16k={:.0} gateway_to_relay_16k={:.2} pacer_lag_p99_ms={:.3} audit_flush_ms={} audit_rows={}",
        k1.p50[0],
        k1.p99[0],
        k1.p50[1],
        k1.p99[1],
        k1.gateway_rps / k1.direct_rps,
        k1.direct_p50,
        k1.direct_p99,
        k1.direct_rps,
        k1.gateway_rps,
        k1.client_rps,
        k16.p50[0],
        k16.p99[0],
        k16.p50[1],
        k16.p99[1],
        k16.gateway_rps / k16.direct_rps,
        k16.direct_rps,
        k16.gateway_rps,
        k1.relay_rps / k1.direct_rps,
        k1.relay_rps,
        k1.gateway_rps / k1.relay_rps,
        k16.relay_rps / k16.direct_rps,
        k16.relay_rps,
        k16.gateway_rps / k16.relay_rps,
        k1.lag_p99.max(k16.lag_p99),
        flush.as_millis(),
        audit_rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The bench takes the audit interval from the platform's variable, with its bounds and
    /// default, and refuses anything else rather than measuring another setting than named.
    #[test]
    fn the_audit_interval_comes_from_the_platforms_variable() {
        assert_eq!(
            audit_flush_interval(None).unwrap(),
            crate::gateway::audit::DEFAULT_FLUSH_INTERVAL
        );
        assert_eq!(
            audit_flush_interval(Some("50")).unwrap(),
            Duration::from_millis(50)
        );
        assert_eq!(
            audit_flush_interval(Some(" 1 ")).unwrap(),
            Duration::from_millis(1)
        );
        for bad in ["0", "60001", "-5", "ten", ""] {
            assert!(audit_flush_interval(Some(bad)).is_err(), "{bad:?} accepted");
        }
    }

    /// The open loop's schedule: every instant once, in order, `interval` apart, and none sent
    /// before it is due (a schedule that released early would hide a slow path's queueing).
    #[tokio::test]
    async fn the_schedule_sends_each_instant_when_it_is_due() {
        let interval = Duration::from_micros(700);
        let mut due = schedule(40, interval);
        let mut got = Vec::new();
        while let Some(at) = due.recv().await {
            assert!(
                Instant::now() >= at,
                "an instant was sent before it was due"
            );
            got.push(at);
        }
        assert_eq!(got.len(), 40);
        for w in got.windows(2) {
            assert_eq!(w[1] - w[0], interval);
        }
    }

    #[test]
    fn upstream_flag_is_parsed_and_checked() {
        let cli = crate::config::Cli::try_parse_from([
            "awooop",
            "bench",
            "gateway",
            "--quick",
            "--upstream",
            "http://127.0.0.1:18090/mcp",
        ])
        .expect("bench gateway --upstream parses");
        let crate::config::Command::Bench(b) = cli.command else {
            panic!("not the bench command");
        };
        assert_eq!(b.upstream.as_deref(), Some("http://127.0.0.1:18090/mcp"));
        assert!(egress("http://127.0.0.1:18090/mcp").is_ok());
        assert!(egress("http://fixture.bench.internal:8080/mcp").is_ok());
        for bad in ["ftp://127.0.0.1/mcp", "127.0.0.1:18090", "not a url"] {
            let e = egress(bad).expect_err(bad).to_string();
            assert!(e.contains("--upstream"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn an_external_upstream_host_is_allowed_for_the_bench_project_only() {
        let policy = egress("http://fixture.bench.internal:8080/mcp").unwrap();
        let snap = policy.snapshot().await.unwrap();
        let url = "http://fixture.bench.internal:8080/mcp";
        assert!(snap.egress.check("bench", url).is_ok());
        assert!(snap.egress.check("other", url).is_err());
    }

    /// The relay forwards what the upstream checks (the credential header, the session id it
    /// handed out) and returns what the upstream answered, refusals included: it measures the
    /// hop, and never answers on its own.
    #[tokio::test]
    async fn the_bare_relay_forwards_headers_and_answers_unchanged() {
        let fx = FixtureServer::start(FixtureOptions {
            require_header: Some(("authorization".into(), format!("Bearer {SECRET}"))),
            ..Default::default()
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(relay::serve(listener, fx.url(), async {
            let _ = stop_rx.await;
        }));
        let url = format!("http://{addr}/mcp");
        let t = Target::connect(&url, SECRET, "blob").await.unwrap();
        t.call(1024).await.unwrap();
        t.call(16 * 1024).await.unwrap();
        let refused = Target::connect(&url, "not-the-secret", "blob").await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("HTTP 401")),
            "the upstream's refusal must come back through the relay"
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
