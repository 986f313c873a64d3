//! The channel hub: Telegram, LINE, Slack and API channels in and out.
//!
//! Contract of this module (it becomes the `awooop-channels` crate):
//! * Adapters receive, verify, normalize, store and route; the outbound worker formats and
//!   sends. Nothing here calls a model or a tool: runs are queued through the runtime's
//!   run-creation API and executed elsewhere. The test `channel_code_cannot_reach_model_or_gateway`
//!   fails if any file of this module imports the model or gateway modules.
//! * Dependencies: error codes, tenancy/db, audit (redaction), contracts, control (active
//!   contracts, migration mode), the runtime's run creation and `outbound_messages`.
//! * Inbound order: size limit → channel lookup (active Channel contract) → verification in
//!   constant time → parse → allowed_senders → one tenant transaction storing the events
//!   (idempotent by unique index) and queueing their runs → 200. Failures before storage write
//!   an audit row with an `E-CHANNEL-…` code and keep nothing of the body.
//!
//! Parts: [`verify`] and [`normalize`] and [`format`] are pure; [`inbound`] is the HTTP edge;
//! [`store`] the SQL; [`delivery`] the outbound worker (with [`providers`] speaking the Bot
//! API, Messaging API and Web API) and progressive feedback; [`double`] the provider doubles.

pub mod approvals;
pub mod delivery;
pub mod format;
pub mod inbound;
pub mod normalize;
pub mod providers;
pub mod store;
pub mod verify;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use awooop_contracts::{Channel, ChannelProvider, Contract, ContractKind, CredentialSource};
use awooop_control::invalidation::Invalidation;
use awooop_control::{ControlPlane, MigrationMode};
use awooop_core::cache::TtlCache;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_runtime::{RunBasis, RunService};
use awooop_store::tenancy::{self, ProjectId};

pub use inbound::routes;
pub use normalize::{EventKind, Normalized};

/// A secret value. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Resolves the credential refs of a Channel contract for a project (the process wires the
/// platform's credential resolver in; tests use [`StaticSecrets`]). Must fail closed: a ref
/// that is not bound to `project` does not resolve.
#[async_trait]
pub trait ChannelSecrets: Send + Sync {
    async fn resolve(&self, project: &ProjectId, source: &CredentialSource) -> Result<Secret>;
}

/// Secrets held in memory, per project (tests, benchmarks, local runs).
#[derive(Default)]
pub struct StaticSecrets {
    values: RwLock<HashMap<(String, String), Secret>>,
}

fn source_key(s: &CredentialSource) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl StaticSecrets {
    pub fn put(&self, project: &str, source: &CredentialSource, value: &str) {
        self.values.write().expect("secrets lock").insert(
            (project.to_string(), source_key(source)),
            Secret::new(value),
        );
    }
}

#[async_trait]
impl ChannelSecrets for StaticSecrets {
    async fn resolve(&self, project: &ProjectId, source: &CredentialSource) -> Result<Secret> {
        self.values
            .read()
            .expect("secrets lock")
            .get(&(project.as_str().to_string(), source_key(source)))
            .cloned()
            .ok_or_else(credential_error)
    }
}

pub fn credential_error() -> Error {
    Error::new(
        ErrorCode::ChannelCredential,
        "a credential of this channel could not be resolved for this project",
    )
}

/// Provider API base URLs (configurable so tests and air-gapped installs can point elsewhere).
#[derive(Debug, Clone)]
pub struct ProviderUrls {
    /// Telegram Bot API, e.g. `https://api.telegram.org` (requests go to `{base}/bot{token}/{method}`).
    pub telegram: String,
    /// LINE Messaging API, e.g. `https://api.line.me` (`{base}/v2/bot/message/reply`).
    pub line: String,
    /// Slack Web API, e.g. `https://slack.com/api` (`{base}/chat.postMessage`).
    pub slack: String,
}

impl Default for ProviderUrls {
    fn default() -> Self {
        Self {
            telegram: "https://api.telegram.org".into(),
            line: "https://api.line.me".into(),
            slack: "https://slack.com/api".into(),
        }
    }
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest accepted webhook body (bytes). Telegram updates and LINE/Slack events are a few
    /// KiB; 256 KiB leaves room for LINE batches.
    pub max_body_bytes: usize,
    pub urls: ProviderUrls,
    /// How long a resolved channel (contract + secrets) is reused. Activating a new Channel
    /// contract or rotating a secret takes effect within this time.
    pub cache_ttl: Duration,
    /// Timeout of a forward to an existing handler (mirror mode) and of provider calls.
    pub http_timeout: Duration,
    /// Allow `http://` forward_to URLs (tests and local runs only: a tenant-chosen URL over
    /// plain HTTP would carry verified webhooks in clear).
    pub allow_insecure_forward: bool,
    /// Tasks writing inbound events (each writes one group-committed transaction at a time).
    pub writers: usize,
    /// At most one audit row per (project, channel, refusal code) per this window: an outsider
    /// posting bad webhooks must not flood the audit log (every refusal is still counted in
    /// `awooop_channel_verification_failures_total`, the unwritten ones also in
    /// `awooop_channel_refusals_unaudited_total`).
    pub refusal_audit_window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            urls: ProviderUrls::default(),
            cache_ttl: Duration::from_secs(5),
            http_timeout: Duration::from_secs(10),
            allow_insecure_forward: false,
            writers: 4,
            refusal_audit_window: Duration::from_secs(60),
        }
    }
}

/// What happens to a command or postback (messages always start a run; edits, joins and
/// leaves are stored only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Start a run of the channel's agent with the event as input.
    Run,
    /// Store it and hand it to [`ActionHandler::handle`] after commit (approval buttons).
    Handler,
    /// Store it only.
    Store,
}

/// Routes commands and button/postback events. Approval buttons are handled by the approvals
/// feature through this trait; the default starts a run for commands and stores postbacks.
#[async_trait]
pub trait ActionHandler: Send + Sync {
    fn route(&self, channel: &Channel, event: &Normalized) -> Route;
    /// Called after the event is committed, for events routed to [`Route::Handler`].
    async fn handle(
        &self,
        project: &ProjectId,
        channel: &Channel,
        event_id: Uuid,
        event: &Normalized,
    ) -> Result<()>;
}

/// The default [`ActionHandler`].
pub struct DefaultActions;

#[async_trait]
impl ActionHandler for DefaultActions {
    fn route(&self, _channel: &Channel, event: &Normalized) -> Route {
        match event.kind {
            EventKind::Message | EventKind::Command => Route::Run,
            EventKind::Postback => Route::Handler,
            EventKind::EditedMessage | EventKind::Join | EventKind::Leave => Route::Store,
        }
    }
    async fn handle(
        &self,
        project: &ProjectId,
        channel: &Channel,
        event_id: Uuid,
        _event: &Normalized,
    ) -> Result<()> {
        tracing::info!(project = project.as_str(), channel = channel.name.as_str(), %event_id, "postback stored; no handler registered");
        Ok(())
    }
}

/// A channel of the active Channel contracts, with its verification secret resolved.
#[derive(Debug, Clone)]
pub struct ResolvedChannel {
    pub channel: Channel,
    pub verify_secret: Option<Secret>,
}

impl ResolvedChannel {
    pub fn name(&self) -> &str {
        self.channel.name.as_str()
    }
    pub fn provider(&self) -> ChannelProvider {
        self.channel.provider
    }
    /// Is this conversation selected for canary sends?
    pub fn canary_selected(&self, conversation: &str) -> bool {
        self.channel.canary.as_ref().is_some_and(|c| {
            c.conversations.is_empty() || c.conversations.iter().any(|x| x == conversation)
        })
    }
    /// May a message to `conversation` leave in `mode`? Shadow never (also enforced by
    /// PostgreSQL); canary only for selected conversations.
    pub fn may_send(&self, mode: MigrationMode, conversation: &str) -> bool {
        self.channel.outbound
            && match mode {
                MigrationMode::Shadow => false,
                MigrationMode::Canary => self.canary_selected(conversation),
                _ => true,
            }
    }
    /// Is `sender` (or the chat) allowed by `allowed_senders`?
    pub fn sender_allowed(&self, e: &Normalized) -> bool {
        let list = &self.channel.allowed_senders;
        list.is_empty()
            || list
                .iter()
                .any(|a| Some(a.as_str()) == e.sender.as_deref() || *a == e.conversation)
    }
}

/// Resolved channels per (project, channel name); see [`awooop_core::cache`] for the rules
/// (single-flight loads, refresh-ahead in the last quarter of the TTL, never served past it).
type ChannelCache = TtlCache<(ProjectId, String), ResolvedChannel, Error>;
/// Run bases per (project, agent), with the same rules.
type BasisCache = TtlCache<(ProjectId, String), RunBasis, Error>;

/// Everything the hub's handlers and workers share.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    control: ControlPlane,
    runs: RunService,
    secrets: Arc<dyn ChannelSecrets>,
    actions: Arc<dyn ActionHandler>,
    config: HubConfig,
    http: reqwest::Client,
    /// The administrator's egress policy: mirror mode's `forward_to` is a tenant-chosen URL,
    /// so it is checked (and its addresses filtered on every connection) like MCP upstreams
    /// and model providers.
    egress: awooop_policy::PolicySource,
    /// One forwarding client per project, built under the egress snapshot in force (digest).
    forward_clients: std::sync::Mutex<HashMap<String, ([u8; 32], reqwest::Client)>>,
    cache: ChannelCache,
    /// Run bases (mode, active revisions) per (project, agent): the inbound path prepares runs
    /// on them without reading PostgreSQL; the write transaction checks them.
    bases: BasisCache,
    /// Group commit of inbound events, started on first use (needs a runtime).
    writer: std::sync::OnceLock<writer::Writer>,
    /// One refusal audit row per (project, channel, code) per `refusal_audit_window`.
    refusal_audit: Option<governor::DefaultKeyedRateLimiter<(ProjectId, String, &'static str)>>,
    metrics: Arc<metrics::ChannelMetrics>,
}

pub mod metrics;

impl Hub {
    pub fn new(control: ControlPlane, secrets: Arc<dyn ChannelSecrets>, config: HubConfig) -> Self {
        awooop_core::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        let egress = awooop_policy::PolicySource::from_db(control.db().clone());
        let refusal_audit = governor::Quota::with_period(config.refusal_audit_window)
            .map(governor::RateLimiter::keyed);
        let (cache, bases) = (
            TtlCache::new(config.cache_ttl),
            TtlCache::new(config.cache_ttl),
        );
        Self {
            inner: Arc::new(HubInner {
                egress,
                runs: RunService::new(control.clone()),
                control,
                secrets,
                actions: Arc::new(DefaultActions),
                forward_clients: Default::default(),
                config,
                http,
                cache,
                bases,
                writer: std::sync::OnceLock::new(),
                refusal_audit,
                metrics: Arc::new(metrics::ChannelMetrics::new()),
            }),
        }
    }

    /// Use another platform policy source (`awooop up` adds its local loopback allowance;
    /// before the hub is shared).
    pub fn with_egress(mut self, egress: awooop_policy::PolicySource) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_egress before the hub is shared")
            .egress = egress;
        self
    }

    /// The client that forwards `url` for `project` in mirror mode, after the egress policy
    /// allowed it: its resolver refuses addresses the policy does not allow on every
    /// connection, it follows no redirects and uses no proxy.
    pub(crate) async fn forward_client(
        &self,
        project: &str,
        url: &str,
    ) -> std::result::Result<reqwest::Client, String> {
        let snap = self
            .inner
            .egress
            .snapshot()
            .await
            .map_err(|e| format!("egress policy unavailable: {}", e.code.as_str()))?;
        snap.egress.check(project, url).map_err(|e| e.to_string())?;
        let mut clients = self.inner.forward_clients.lock().expect("forward clients");
        if let Some((digest, c)) = clients.get(project)
            && *digest == snap.digest
        {
            return Ok(c.clone());
        }
        let c = awooop_policy::egress::client_builder(project, snap.egress.clone())
            .timeout(self.inner.config.http_timeout)
            .build()
            .map_err(|_| "cannot build the forwarding client".to_string())?;
        clients.insert(project.to_string(), (snap.digest, c.clone()));
        Ok(c)
    }

    /// Replace the command/postback router (before the hub is shared).
    pub fn with_actions(mut self, actions: Arc<dyn ActionHandler>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_actions before the hub is shared")
            .actions = actions;
        self
    }

    pub fn control(&self) -> &ControlPlane {
        &self.inner.control
    }
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }
    pub fn metrics(&self) -> &Arc<metrics::ChannelMetrics> {
        &self.inner.metrics
    }
    pub(crate) fn runs(&self) -> &RunService {
        &self.inner.runs
    }
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
    pub(crate) fn actions(&self) -> &Arc<dyn ActionHandler> {
        &self.inner.actions
    }

    /// Drop cached channels and run bases (after an activation, in tests).
    pub fn invalidate(&self) {
        self.inner.cache.clear();
        self.inner.bases.clear();
    }

    /// Drop what is cached for one project (loads of it in flight are not joined any more and
    /// do not install their result).
    pub fn invalidate_project(&self, project: &ProjectId) {
        self.inner.cache.invalidate(|(p, _)| p == project);
        self.inner.bases.invalidate(|(p, _)| p == project);
    }

    /// Drop a project's cached channels and run bases on each activation, mode change or
    /// project status change (`LISTEN awooop_activation`), and everything whenever the listener
    /// was not listening ([`awooop_control::invalidation::follow`]); the write transaction
    /// re-checks the run basis either way.
    pub fn spawn_invalidation(&self) -> tokio::task::JoinHandle<()> {
        let hub = Arc::downgrade(&self.inner);
        awooop_control::invalidation::follow(self.inner.control.db(), move |inv| {
            let Some(inner) = hub.upgrade() else {
                return false;
            };
            let h = Hub { inner };
            match inv {
                Invalidation::Project(p) => h.invalidate_project(&p),
                Invalidation::All => h.invalidate(),
            }
            true
        })
    }

    /// The run basis of `agent` in `project` (cached for `cache_ttl`).
    pub(crate) async fn basis(&self, project: &ProjectId, agent: &str) -> Result<Arc<RunBasis>> {
        let key = (project.clone(), agent.to_string());
        self.inner
            .bases
            .get(&key, || {
                let (hub, project, agent) = (self.clone(), project.clone(), agent.to_string());
                // The load runs in a task of its own: it carries the tenant scope itself.
                tenancy::scope(project, async move {
                    hub.metrics().cache_load("basis");
                    hub.inner.runs.basis(&agent).await
                })
            })
            .await
            .map_err(Error::unshare)
    }

    /// Whether this refusal gets an audit row (else it is only counted).
    pub(crate) fn audit_refusal(
        &self,
        project: &ProjectId,
        channel: &str,
        code: &'static str,
    ) -> bool {
        let Some(l) = &self.inner.refusal_audit else {
            return true;
        };
        // Keys of quiet channels are dropped again once their window has passed.
        if l.len() > 10_000 {
            l.retain_recent();
            l.shrink_to_fit();
        }
        l.check_key(&(project.clone(), channel.to_string(), code))
            .is_ok()
    }

    pub(crate) fn writer(&self) -> &writer::Writer {
        self.inner.writer.get_or_init(|| {
            writer::Writer::start(self.inner.control.db().clone(), self.inner.config.writers)
        })
    }

    /// The channel `name` of the current project's active Channel contracts, with its
    /// verification secret. Unknown channels and projects are indistinguishable
    /// (`E-CHANNEL-001`).
    pub async fn channel(&self, project: &ProjectId, name: &str) -> Result<Arc<ResolvedChannel>> {
        let key = (project.clone(), name.to_string());
        self.inner
            .cache
            .get(&key, || {
                let (hub, project, name) = (self.clone(), project.clone(), name.to_string());
                tenancy::scope(project.clone(), async move {
                    hub.metrics().cache_load("channel");
                    hub.load_channel(&project, &name).await
                })
            })
            .await
            .map_err(Error::unshare)
    }

    async fn load_channel(&self, project: &ProjectId, name: &str) -> Result<ResolvedChannel> {
        let channel = self.channel_contract(name).await?;
        let verify_secret = match &channel.verify_secret {
            Some(src) => Some(
                self.inner
                    .secrets
                    .resolve(project, src)
                    .await
                    .map_err(|e| {
                        tracing::warn!(
                            project = project.as_str(),
                            channel = name,
                            code = e.code.as_str(),
                            "channel verification secret unresolved"
                        );
                        credential_error()
                    })?,
            ),
            None => None,
        };
        Ok(ResolvedChannel {
            channel,
            verify_secret,
        })
    }

    /// The channel `name` of the current project's active Channel contracts, unresolved.
    pub async fn channel_contract(&self, name: &str) -> Result<Channel> {
        let not_found = || Error::new(ErrorCode::ChannelNotFound, "no such channel");
        let control = &self.inner.control;
        let active = match control.active_list().await {
            Ok(a) => a,
            Err(e) if e.code == ErrorCode::ProjectNotFound => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let mut found = None;
        for row in active
            .iter()
            .filter(|r| r.kind == ContractKind::Channel.as_str())
        {
            if let (_, Contract::Channel(c)) = control
                .active_typed(ContractKind::Channel, &row.name)
                .await?
                && let Some(ch) = c.channels.into_iter().find(|c| c.name.as_str() == name)
            {
                found = Some(ch);
                break;
            }
        }
        let channel = found.ok_or_else(not_found)?;
        if channel.provider == ChannelProvider::Email {
            return Err(not_found());
        }
        Ok(channel)
    }

    /// The channel's send credential (bot token / channel access token / bot OAuth token).
    pub async fn send_credential(
        &self,
        project: &ProjectId,
        ch: &ResolvedChannel,
    ) -> Result<Secret> {
        let src = ch
            .channel
            .send_credential
            .as_ref()
            .ok_or_else(credential_error)?;
        self.inner
            .secrets
            .resolve(project, src)
            .await
            .map_err(|_| credential_error())
    }
}

#[cfg(test)]
mod boundary {
    //! Adapters never call a model or a tool: this crate may not depend on `awooop-model` or
    //! `awooop-gateway`, directly or through another workspace crate. Cargo refuses an import
    //! of a crate that is not a dependency; this test refuses the dependency itself, by
    //! walking the workspace crates' manifests from this one.

    use std::collections::BTreeSet;
    use std::path::Path;

    /// The `awooop-*` dependencies named in a crate's manifest (normal dependencies only:
    /// dev-dependencies do not reach production code).
    fn workspace_deps(manifest: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(manifest).expect("read Cargo.toml");
        let mut in_deps = false;
        let mut out = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.starts_with('[') {
                in_deps = l == "[dependencies]";
                continue;
            }
            if in_deps
                && let Some(name) = l.split(['=', '.', ' ']).next()
                && name.starts_with("awooop-")
            {
                out.push(name.to_string());
            }
        }
        out
    }

    #[test]
    fn channel_crate_cannot_reach_model_or_gateway() {
        let operator = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = BTreeSet::new();
        let mut todo = vec!["awooop-channels".to_string()];
        while let Some(c) = todo.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            let dir = operator.join(c.trim_start_matches("awooop-"));
            let manifest = dir.join("Cargo.toml");
            assert!(
                manifest.exists(),
                "no manifest for {c} at {}",
                manifest.display()
            );
            todo.extend(workspace_deps(&manifest));
        }
        assert!(
            seen.contains("awooop-runtime"),
            "the walk found the runtime: {seen:?}"
        );
        for forbidden in ["awooop-model", "awooop-gateway", "awooop-http"] {
            assert!(
                !seen.contains(forbidden),
                "awooop-channels reaches {forbidden} through {seen:?}"
            );
        }
    }
}
