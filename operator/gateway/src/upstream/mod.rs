//! MCP client toward upstream tool servers (the gateway's outbound side).
//!
//! Contract:
//! * [`Upstreams::call_tool`] sends one `tools/call` to the provider of a project's active MCP
//!   Gateway contract and returns the upstream's `CallToolResult` JSON **unmodified**
//!   (redaction and truncation are the gateway core's job), or a typed [`UpstreamError`].
//! * One connection per (project, provider name, fingerprint of transport config + credential
//!   values): an MCP session over Streamable HTTP ([`http`]) or a child process over stdio
//!   ([`stdio`]). Nothing is shared between projects, not even a TCP connection (each HTTP
//!   session has its own connection pool). A rotated credential changes the fingerprint: the
//!   next call opens a new connection/child and the old one is closed.
//! * Credential values live only in request headers (HTTP) or the child's environment
//!   (stdio, which starts from an empty environment); they are never logged, never part of an
//!   error, and [`Injected`]'s `Debug` prints `<redacted>`.
//! * Nothing tenant-chosen runs or is reached without the administrator's say
//!   ([`crate::platform`]): a stdio provider names an entry of the platform's stdio catalog
//!   (command, arguments, allowed env vars), started as the tenant's own uid
//!   ([`StdioIsolation::TenantUid`]) so it cannot read the platform's or another tenant's
//!   children's `/proc/*/environ`; an HTTP provider's URL must pass the egress policy, and its
//!   resolved addresses are checked again on every new connection.
//! * Connections idle longer than [`UpstreamConfig::idle_timeout`] are closed; at most
//!   [`UpstreamConfig::max_sessions`] are kept (least recently used closed first).
//!
//! Why not the rmcp client: rmcp's Streamable HTTP client fixes its headers per transport, so
//! the per-call `traceparent` header and per-call timeout would need a transport per call, and
//! its worker task adds a channel hop per message on the hot path the gateway benchmark
//! measures. The wire protocol the gateway needs (initialize, tools/call, SSE responses,
//! session expiry) is small, so it is written here on hyper's client (HTTP, [`client`]) and tokio
//! (stdio), and
//! tested against the official Python SDK's server over both transports.

pub mod client;
pub mod http;
pub mod protocol;
pub mod stdio;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use awooop_contracts::{Injection, McpTransport};
use awooop_core::error::ErrorCode;
use awooop_policy::PolicySource;
use awooop_policy::catalog::CatalogEntry;
use awooop_policy::egress::EgressPolicy;
use awooop_store::tenancy::ProjectId;

/// The call, its credentials and its error are the port's types ([`crate::service`]): one
/// set for the gateway core and this client.
pub use crate::service::{CallRequest, CallResult, Injected, UpstreamError};

/// The gateway core calls upstreams through its `ToolUpstream` trait; this pool is that
/// client. Credential values are copied out of the resolver's `SecretValue` only here, into the
/// request that carries them.
#[async_trait::async_trait]
impl crate::service::ToolUpstream for Upstreams {
    async fn call_tool(
        &self,
        call: crate::service::UpstreamCall<'_>,
    ) -> Result<serde_json::Value, UpstreamError> {
        let credentials: Vec<Injected> = call
            .credentials
            .iter()
            .map(|c| Injected {
                inject: c.inject.clone(),
                value: c.value.expose().to_string(),
            })
            .collect();
        Upstreams::call_tool(
            self,
            CallRequest {
                project: call.project,
                provider: call.provider,
                tool: call.tool,
                arguments: call.arguments,
                credentials: &credentials,
                traceparent: call.traceparent,
                idempotency_key: call.idempotency_key,
                timeout: call.timeout,
            },
        )
        .await
    }
}

/// Pool settings. `Default` gives production values; [`UpstreamArgs`] reads them from flags
/// or environment variables.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Close a connection (HTTP session or child) unused for this long.
    pub idle_timeout: Duration,
    /// Most connections kept at once; beyond it the least recently used is closed.
    pub max_sessions: usize,
    /// TCP connect timeout for HTTP upstreams.
    pub connect_timeout: Duration,
    /// Largest response body (HTTP) or line (stdio) accepted from an upstream.
    pub max_response_bytes: usize,
    /// First delay before restarting a stdio child that died; doubles per crash in a row
    /// (with jitter, `awooop_core::backoff`).
    pub restart_backoff: Duration,
    /// Upper bound of the restart delay.
    pub restart_backoff_max: Duration,
    /// Variables copied from the gateway's environment into stdio children (everything
    /// else, e.g. DATABASE_URL or AWOOOP_GATEWAY_KEY, is withheld).
    pub child_env_passthrough: Vec<String>,
    /// Which uid stdio children run as.
    pub stdio_isolation: StdioIsolation,
}

/// Which uid stdio children run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdioIsolation {
    /// Each tenant's children run as their own uid and gid (`base + n`, n allocated once per
    /// project in `platform_tenant_uids`), without supplementary groups: they cannot read the
    /// platform's or another tenant's children's `/proc/<pid>/environ` (the kernel allows that
    /// only to the same uid or CAP_SYS_PTRACE). Needs root, or CAP_SETUID and CAP_SETGID.
    TenantUid { base: u32 },
    /// Children run as the platform's own uid: one trusted tenant on a developer machine only.
    SameUid,
}

/// Default first uid of tenant children: above the ranges distributions give to users.
pub const DEFAULT_UID_BASE: u32 = 200_000;

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_sessions: 1024,
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 16 * 1024 * 1024,
            restart_backoff: Duration::from_millis(50),
            restart_backoff_max: Duration::from_secs(5),
            child_env_passthrough: ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]
                .into_iter()
                .map(String::from)
                .collect(),
            stdio_isolation: StdioIsolation::TenantUid {
                base: DEFAULT_UID_BASE,
            },
        }
    }
}

/// Flags for the upstream pool (flatten into the command that serves the gateway).
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Close an upstream MCP session or stdio child after this many idle seconds.
    #[arg(long, env = "AWOOOP_UPSTREAM_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub upstream_idle_timeout_secs: u64,
    /// Most upstream sessions/children kept open at once.
    #[arg(long, env = "AWOOOP_UPSTREAM_MAX_SESSIONS", default_value_t = 1024)]
    pub upstream_max_sessions: usize,
    /// TCP connect timeout toward HTTP upstreams, in milliseconds.
    #[arg(
        long,
        env = "AWOOOP_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub upstream_connect_timeout_ms: u64,
    /// Largest upstream response accepted, in bytes.
    #[arg(long, env = "AWOOOP_UPSTREAM_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub upstream_max_response_bytes: usize,
    /// Which uid stdio catalog children run as: `tenant-uid` (one uid per tenant; needs root or
    /// CAP_SETUID/CAP_SETGID) or `same-uid` (the platform's own; a single trusted tenant on a
    /// developer machine only).
    #[arg(long, env = "AWOOOP_STDIO_ISOLATION", default_value = "tenant-uid", value_parser = ["tenant-uid", "same-uid"])]
    pub stdio_isolation: String,
    /// First uid (and gid) of tenant stdio children (`tenant-uid`): tenant n runs as base + n.
    #[arg(long, env = "AWOOOP_STDIO_UID_BASE", default_value_t = DEFAULT_UID_BASE)]
    pub stdio_uid_base: u32,
}

impl UpstreamArgs {
    pub fn config(&self) -> UpstreamConfig {
        let Self {
            upstream_idle_timeout_secs,
            upstream_max_sessions,
            upstream_connect_timeout_ms,
            upstream_max_response_bytes,
            stdio_isolation,
            stdio_uid_base,
        } = self;
        UpstreamConfig {
            idle_timeout: Duration::from_secs((*upstream_idle_timeout_secs).max(1)),
            max_sessions: (*upstream_max_sessions).max(1),
            connect_timeout: Duration::from_millis((*upstream_connect_timeout_ms).max(1)),
            max_response_bytes: (*upstream_max_response_bytes).max(1024),
            stdio_isolation: if stdio_isolation == "same-uid" {
                StdioIsolation::SameUid
            } else {
                StdioIsolation::TenantUid {
                    base: (*stdio_uid_base).max(1000),
                }
            },
            ..UpstreamConfig::default()
        }
    }
}

/// One pooled connection.
enum Conn {
    Http(http::HttpSession),
    Stdio(stdio::StdioUpstream),
}

impl Conn {
    async fn call(
        &self,
        req: &CallRequest<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<CallResult, UpstreamError> {
        match self {
            Conn::Http(h) => {
                h.call(
                    req.tool,
                    req.arguments,
                    req.traceparent,
                    req.idempotency_key,
                    deadline,
                )
                .await
            }
            Conn::Stdio(s) => {
                s.call(
                    req.tool,
                    req.arguments,
                    req.traceparent,
                    req.idempotency_key,
                    deadline,
                )
                .await
            }
        }
    }

    async fn close(&self) {
        match self {
            Conn::Http(h) => h.close().await,
            Conn::Stdio(s) => s.close().await,
        }
    }
}

struct Entry {
    fingerprint: [u8; 32],
    conn: Arc<Conn>,
    /// Milliseconds since the pool's epoch of the last call (atomic: no write lock per call).
    last_used: Arc<AtomicU64>,
}

type Key = (ProjectId, String);

struct Inner {
    config: UpstreamConfig,
    policy: PolicySource,
    epoch: Instant,
    conns: Mutex<HashMap<Key, Entry>>,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Pool of upstream connections: one MCP session (HTTP) or child process (stdio) per
/// (project, provider name, fingerprint of transport config + credential values), so a rotated
/// credential yields a new connection/child, the old one is closed, and nothing is ever shared
/// between projects. Children that die are restarted on the next call (with backoff).
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

impl Upstreams {
    /// A pool that refuses every upstream (no catalog entry, no destination allowed): what a
    /// pool without a platform policy can safely do. See [`Upstreams::guarded`].
    pub fn new(config: UpstreamConfig) -> Self {
        Self::guarded(config, PolicySource::deny_all())
    }

    /// A new pool under the platform policy `policy` (stdio catalog, egress allow-list, tenant
    /// uids). Inside a tokio runtime it also starts the idle sweeper (which stops when the
    /// last clone of the pool is dropped).
    pub fn guarded(config: UpstreamConfig, policy: PolicySource) -> Self {
        let inner = Arc::new(Inner {
            config,
            policy,
            epoch: Instant::now(),
            conns: Mutex::new(HashMap::new()),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            let every = (inner.config.idle_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30));
            handle.spawn(sweeper(weak, every));
        }
        Self { inner }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    /// Call one tool upstream. The whole call (connecting, initializing, restarting a dead
    /// child, the request itself) is bounded by `req.timeout`.
    pub async fn call_tool(&self, req: CallRequest<'_>) -> Result<CallResult, UpstreamError> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let target = match tokio::time::timeout_at(deadline, self.resolve(&req)).await {
            Ok(t) => t?,
            Err(_) => return Err(UpstreamError::Timeout),
        };
        let conn = self.connection(&req, &target)?;
        match tokio::time::timeout_at(deadline, conn.call(&req, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Number of open pooled connections (sessions + children).
    pub fn open_connections(&self) -> usize {
        self.inner.conns.lock().expect("pool lock").len()
    }

    /// Close every connection (HTTP sessions are ended with DELETE, children are killed).
    pub async fn shutdown(&self) {
        let all: Vec<Entry> = {
            let mut map = self.inner.conns.lock().expect("pool lock");
            map.drain().map(|(_, e)| e).collect()
        };
        for e in all {
            e.conn.close().await;
        }
    }

    /// Close connections idle for longer than the idle timeout. The sweeper calls this; it is
    /// public so tests and shutdown paths can force it.
    pub async fn evict_idle(&self) -> usize {
        evict_idle(&self.inner).await
    }

    /// What the platform policy makes of the provider: a checked URL with the egress policy
    /// its connections resolve under, or a catalog entry with the uid its child runs as.
    async fn resolve(&self, req: &CallRequest<'_>) -> Result<Target, UpstreamError> {
        let snap = self.inner.policy.snapshot().await.map_err(|e| {
            tracing::warn!("cannot read the platform policy: {}", e.message);
            UpstreamError::Unavailable("cannot read the platform policy".into())
        })?;
        match &req.provider.transport {
            McpTransport::StreamableHttp { url } => {
                snap.check_egress(req.project.as_str(), url).map_err(|e| {
                    UpstreamError::Refused {
                        code: ErrorCode::EgressDenied,
                        message: e.to_string(),
                    }
                })?;
                Ok(Target::Http {
                    url: url.clone(),
                    egress: snap.egress.clone(),
                    digest: snap.digest,
                })
            }
            McpTransport::Stdio { entry } => {
                let e = snap
                    .catalog
                    .get(entry.as_str())
                    .ok_or_else(|| UpstreamError::Refused {
                        code: ErrorCode::CatalogUnknownEntry,
                        message: format!(
                            "stdio catalog entry {:?} is not registered",
                            entry.as_str()
                        ),
                    })?;
                for c in req.credentials {
                    if let Injection::Env { var } = &c.inject
                        && !e.env_allow.contains(var)
                    {
                        return Err(UpstreamError::Refused {
                            code: ErrorCode::CatalogUnknownEntry,
                            message: format!(
                                "stdio catalog entry {:?} does not allow credentials in {var}",
                                entry.as_str()
                            ),
                        });
                    }
                }
                let uid = match self.inner.config.stdio_isolation {
                    StdioIsolation::SameUid => None,
                    StdioIsolation::TenantUid { base } => {
                        // Boxed: cold (cached after the first call), and large inline.
                        let off = Box::pin(self.inner.policy.tenant_uid_offset(req.project))
                            .await
                            .map_err(|e| {
                                tracing::warn!("cannot allocate the tenant uid: {}", e.message);
                                UpstreamError::Unavailable(
                                    "cannot allocate the tenant's uid".into(),
                                )
                            })?;
                        Some(base.checked_add(off).ok_or_else(|| {
                            UpstreamError::Unavailable("tenant uid out of range".into())
                        })?)
                    }
                };
                Ok(Target::Stdio {
                    entry: e.clone(),
                    uid,
                })
            }
        }
    }

    fn connection(
        &self,
        req: &CallRequest<'_>,
        target: &Target,
    ) -> Result<Arc<Conn>, UpstreamError> {
        let fp = fingerprint(target, req.credentials);
        let key: Key = (req.project.clone(), req.provider.name.as_str().to_string());
        let now = self.inner.now_ms();
        let mut closed = Vec::new();
        let conn = {
            let mut map = self.inner.conns.lock().expect("pool lock");
            match map.get(&key) {
                Some(e) if e.fingerprint == fp => {
                    e.last_used.store(now, Ordering::Relaxed);
                    e.conn.clone()
                }
                _ => {
                    let conn = Arc::new(self.open(req, target)?);
                    if let Some(old) = map.insert(
                        key,
                        Entry {
                            fingerprint: fp,
                            conn: conn.clone(),
                            last_used: Arc::new(AtomicU64::new(now)),
                        },
                    ) {
                        // Rotated credential or changed transport: the old connection goes.
                        closed.push(old.conn);
                    }
                    let excess = map.len().saturating_sub(self.inner.config.max_sessions);
                    if excess > 0 {
                        closed.extend(evict_lru(&mut map, excess));
                    }
                    conn
                }
            }
        };
        for old in closed {
            tokio::spawn(async move { old.close().await });
        }
        Ok(conn)
    }

    fn open(&self, req: &CallRequest<'_>, target: &Target) -> Result<Conn, UpstreamError> {
        let cfg = &self.inner.config;
        Ok(match target {
            Target::Http { url, egress, .. } => {
                let headers: Vec<(&str, String)> = req
                    .credentials
                    .iter()
                    .filter_map(|c| match &c.inject {
                        Injection::Header { name, prefix } => {
                            Some((name.as_str(), format!("{prefix}{}", c.value)))
                        }
                        Injection::Env { .. } => None,
                    })
                    .collect();
                Conn::Http(http::HttpSession::new(
                    url,
                    &headers,
                    cfg,
                    req.project.as_str(),
                    egress.clone(),
                )?)
            }
            Target::Stdio { entry, uid } => {
                let env: Vec<(String, String)> = req
                    .credentials
                    .iter()
                    .filter_map(|c| match &c.inject {
                        Injection::Env { var } => Some((var.clone(), c.value.clone())),
                        Injection::Header { .. } => None,
                    })
                    .collect();
                Conn::Stdio(stdio::StdioUpstream::new(
                    stdio::ChildSpec {
                        command: entry.command.clone(),
                        args: entry.args.clone(),
                        env,
                        uid: *uid,
                        label: format!("{}/{}", req.project, req.provider.name.as_str()),
                    },
                    cfg,
                ))
            }
        })
    }
}

/// A provider as the platform policy resolved it.
pub enum Target {
    Http {
        url: String,
        egress: Arc<EgressPolicy>,
        /// The policy snapshot's digest: a changed policy opens a new session.
        digest: [u8; 32],
    },
    Stdio {
        entry: CatalogEntry,
        /// The tenant's uid (None: the platform's own, [`StdioIsolation::SameUid`]).
        uid: Option<u32>,
    },
}

/// Remove the `n` least recently used entries.
fn evict_lru(map: &mut HashMap<Key, Entry>, n: usize) -> Vec<Arc<Conn>> {
    let mut by_age: Vec<(u64, Key)> = map
        .iter()
        .map(|(k, e)| (e.last_used.load(Ordering::Relaxed), k.clone()))
        .collect();
    by_age.sort_by_key(|(t, _)| *t);
    by_age
        .into_iter()
        .take(n)
        .filter_map(|(_, k)| map.remove(&k).map(|e| e.conn))
        .collect()
}

async fn evict_idle(inner: &Inner) -> usize {
    let idle_ms = inner.config.idle_timeout.as_millis() as u64;
    let now = inner.now_ms();
    let gone: Vec<Arc<Conn>> = {
        let mut map = inner.conns.lock().expect("pool lock");
        let stale: Vec<Key> = map
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|k| map.remove(&k).map(|e| e.conn))
            .collect()
    };
    let n = gone.len();
    for c in gone {
        c.close().await;
    }
    n
}

async fn sweeper(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // The sweeper's own reference must not keep the pool alive.
        if Arc::strong_count(&inner) <= 1 {
            return;
        }
        evict_idle(&inner).await;
    }
}

/// SHA-256 over the resolved target and every credential (where it goes and its value), so a
/// rotated value, a changed URL, egress policy, catalog entry or uid maps to a different
/// connection. Length-prefixed fields: no two different inputs hash the same bytes.
pub fn fingerprint(target: &Target, credentials: &[Injected]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    match target {
        Target::Http { url, digest, .. } => {
            field(b"http");
            field(url.as_bytes());
            field(digest);
        }
        Target::Stdio { entry, uid } => {
            field(b"stdio");
            field(entry.name.as_bytes());
            field(entry.command.as_bytes());
            field(&(entry.args.len() as u64).to_be_bytes());
            for a in &entry.args {
                field(a.as_bytes());
            }
            field(&uid.map(u64::from).unwrap_or(u64::MAX).to_be_bytes());
        }
    }
    for c in credentials {
        match &c.inject {
            Injection::Header { name, prefix } => {
                field(b"header");
                field(name.to_ascii_lowercase().as_bytes());
                field(prefix.as_bytes());
            }
            Injection::Env { var } => {
                field(b"env");
                field(var.as_bytes());
            }
        }
        field(c.value.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every upstream call's future is boxed (`ToolUpstream` is an `async_trait`), so its size
    /// is allocated and copied per call: the policy snapshot's reload transaction and the
    /// session's initialization stay out of it (boxed where they happen): 1,984 bytes, 4,896
    /// with them inline (test build).
    #[test]
    fn the_upstream_call_future_stays_small() {
        fn future_size<A, B, Fut>(_: impl FnOnce(A, B) -> Fut) -> usize {
            std::mem::size_of::<Fut>()
        }
        let n = future_size(Upstreams::call_tool);
        assert!(n <= 3 * 1024, "the upstream call future is {n} bytes");
    }

    fn http(url: &str) -> Target {
        Target::Http {
            url: url.into(),
            egress: Arc::new(EgressPolicy::default()),
            digest: [0; 32],
        }
    }

    fn stdio(args: &[&str], uid: Option<u32>) -> Target {
        Target::Stdio {
            entry: CatalogEntry {
                name: "x".into(),
                command: "x".into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env_allow: vec![],
                description: String::new(),
            },
            uid,
        }
    }

    fn header(name: &str, prefix: &str, value: &str) -> Injected {
        Injected {
            inject: Injection::Header {
                name: name.into(),
                prefix: prefix.into(),
            },
            value: value.into(),
        }
    }

    #[test]
    fn fingerprint_changes_with_every_input_that_matters() {
        let http = http("http://a/mcp");
        let http2 = self::http("http://b/mcp");
        let http3 = Target::Http {
            url: "http://a/mcp".into(),
            egress: Arc::new(EgressPolicy::default()),
            digest: [1; 32],
        };
        let stdio = stdio(&["a b"], Some(1));
        let stdio2 = self::stdio(&["a", "b"], Some(1));
        let stdio3 = self::stdio(&["a b"], Some(2));
        let base = fingerprint(&http, &[header("Authorization", "Bearer ", "s1")]);
        let distinct = [
            fingerprint(&http, &[header("Authorization", "Bearer ", "s2")]),
            fingerprint(&http, &[header("Authorization", "", "Bearer s1")]),
            fingerprint(&http, &[header("X-Key", "Bearer ", "s1")]),
            fingerprint(&http2, &[header("Authorization", "Bearer ", "s1")]),
            fingerprint(&http, &[]),
            fingerprint(&stdio, &[]),
            fingerprint(&stdio2, &[]),
            fingerprint(&http3, &[header("Authorization", "Bearer ", "s1")]),
            fingerprint(&stdio3, &[]),
        ];
        for (i, d) in distinct.iter().enumerate() {
            assert_ne!(&base, d, "case {i}");
        }
        assert_ne!(distinct[5], distinct[6], "args are length-prefixed");
        assert_ne!(
            distinct[5], distinct[8],
            "another tenant's uid, another child"
        );
        // Same inputs, same connection; header names are case-insensitive.
        assert_eq!(
            base,
            fingerprint(&http, &[header("authorization", "Bearer ", "s1")])
        );
    }

    #[test]
    fn injected_debug_never_prints_the_value() {
        let s = format!("{:?}", header("X-Key", "", "supersecret-value"));
        assert!(!s.contains("supersecret"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn args_destructure_into_config() {
        let a = UpstreamArgs {
            upstream_idle_timeout_secs: 0,
            upstream_max_sessions: 0,
            upstream_connect_timeout_ms: 250,
            upstream_max_response_bytes: 10,
            stdio_isolation: "tenant-uid".into(),
            stdio_uid_base: 5,
        };
        let c = a.config();
        assert_eq!(c.idle_timeout, Duration::from_secs(1));
        assert_eq!(c.max_sessions, 1);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.max_response_bytes, 1024);
        assert_eq!(c.stdio_isolation, StdioIsolation::TenantUid { base: 1000 });
    }
}
