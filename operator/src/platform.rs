//! The composition root shared by the commands (and the benchmarks): a connected platform
//! (database, migrations, Redis, keyring), the gateway and workers wired onto it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::auth::Actor;
use crate::config::*;
use crate::contracts::signing::Keyring;
use crate::control::ControlPlane;
use crate::coord::Coord;
use crate::db;
use crate::error::Error;
use crate::local::{self, LocalPostgres};
use crate::tenancy::{self, Db, ProjectId};

/// A connected platform: keeps the private PostgreSQL (if any) alive while it lives.
pub struct Platform {
    pub control: ControlPlane,
    pub owner_url: String,
    pub state_dir: PathBuf,
    /// Where the workers' tool calls go (the MCP gateway once [`attach_gateway`] ran).
    pub tools: std::sync::Arc<dyn crate::runtime::executor::ToolGateway>,
    /// How model provider API keys resolve: project-bound, by the gateway's rules once
    /// [`attach_gateway`] ran; before that every ref is denied.
    pub model_credentials: std::sync::Arc<dyn crate::model::proxy::CredentialResolver>,
    /// The administrator's stdio catalog and egress rules (plus, for `awooop up`, the local
    /// loopback allowance): read by the gateway's upstream client and the model proxy.
    pub policy: awooop_policy::PolicySource,
    _pg: LocalPostgres,
}

impl Platform {
    pub async fn connect(
        db_args: &DbArgs,
        redis: Option<&RedisArgs>,
        keyring: Option<&KeyringArgs>,
    ) -> anyhow::Result<Self> {
        validate_db(db_args)?;
        if let Some(r) = redis {
            validate_redis(r)?;
        }
        std::fs::create_dir_all(&db_args.state_dir).with_context(|| {
            format!("cannot create state folder {}", db_args.state_dir.display())
        })?;
        // With only the runtime role's URL (pods: `awooop serve`, workers) nothing needs the
        // owner: no migration here (the chart runs `awooop migrate` with the owner's URL in a
        // separate container), and the owner's URL never reaches this process.
        let pg = match (&db_args.database_url, &db_args.app_database_url) {
            (None, Some(app)) => LocalPostgres::external(app),
            _ => {
                let pg =
                    local::resolve(db_args.database_url.as_deref(), &db_args.state_dir).await?;
                db::migrate(&pg.url).await.map_err(anyhow_err)?;
                pg
            }
        };
        let app_url = db_args
            .app_database_url
            .clone()
            .unwrap_or_else(|| pg.url.clone());
        let pool = db::connect_app(&app_url, db_args.db_max_connections)
            .await
            .map_err(anyhow_err)?;
        let coord = match redis.and_then(|r| r.redis_url.as_deref()) {
            Some(u) => Coord::connect(u).context("invalid REDIS_URL")?,
            None => Coord::none(),
        };
        let keyring = load_keyring(keyring, &db_args.state_dir)?;
        let db = Db::new(pool);
        Ok(Self {
            policy: awooop_policy::PolicySource::from_db(db.clone()),
            control: ControlPlane::new(db, coord, keyring),
            owner_url: pg.url.clone(),
            state_dir: db_args.state_dir.clone(),
            tools: std::sync::Arc::new(crate::runtime::executor::NoGateway),
            model_credentials: std::sync::Arc::new(
                crate::gateway::credentials::CredentialResolver::new(
                    None,
                    Default::default(),
                    std::time::Duration::ZERO,
                ),
            ),
            _pg: pg,
        })
    }

    pub fn source(&self) -> &'static str {
        self._pg.source
    }
}

pub(crate) fn keyring_path(k: Option<&KeyringArgs>, state_dir: &Path) -> PathBuf {
    k.and_then(|k| k.keyring.clone())
        .unwrap_or_else(|| state_dir.join("keyring"))
}

pub(crate) fn load_keyring(k: Option<&KeyringArgs>, state_dir: &Path) -> anyhow::Result<Keyring> {
    let path = keyring_path(k, state_dir);
    if path.exists() {
        Keyring::load(&path).map_err(anyhow_err)
    } else {
        Ok(Keyring::default())
    }
}

/// The keyring in `path`, empty when the file does not exist yet.
pub(crate) fn load_keyring_file(path: &Path) -> anyhow::Result<Keyring> {
    if path.exists() {
        Keyring::load(path).map_err(anyhow_err)
    } else {
        Ok(Keyring::default())
    }
}

pub(crate) fn anyhow_err(e: Error) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code, e.message)
}

pub(crate) fn print<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

// --- MCP gateway (operator/src/gateway/) ---

/// The gateway master key: flag/env, else STATE_DIR/gateway-key (generated there once when
/// `generate`, like the admin token).
pub fn gateway_key(
    explicit: Option<&str>,
    state_dir: &Path,
    generate: bool,
) -> anyhow::Result<String> {
    if let Some(k) = explicit {
        return Ok(k.to_string());
    }
    let path = state_dir.join("gateway-key");
    if path.exists() {
        return Ok(std::fs::read_to_string(&path)?.trim().to_string());
    }
    if !generate {
        anyhow::bail!(
            "no gateway key: set AWOOOP_GATEWAY_KEY or run `awooop up` once to create {}",
            path.display()
        );
    }
    let k = crate::gateway::keys::GatewayKeys::generate_master();
    write_private(&path, k.as_bytes())?;
    Ok(k)
}

/// Build the gateway, make it the workers' tool gateway, and start its audit writer and
/// activation listener. Callers flush its audit (`gw.audit().flush()`) before exiting.
pub fn attach_gateway(
    p: &mut Platform,
    args: &GatewayArgs,
    generate_key: bool,
    secrets: Option<std::sync::Arc<dyn crate::gateway::credentials::SecretLookup>>,
) -> anyhow::Result<std::sync::Arc<crate::gateway::Gateway>> {
    use crate::gateway::{credentials, keys::GatewayKeys};
    let master = match gateway_key(args.gateway_key.as_deref(), &p.state_dir, generate_key) {
        Ok(k) => k,
        // A worker without the key still gates, redacts and audits every tool call; only
        // approval tokens (minted with the real key) cannot verify here, so calls that need
        // one fail closed (E-MCP-GATE-006).
        Err(e) if !generate_key => {
            tracing::warn!("{e}; using an ephemeral gateway key in this process");
            GatewayKeys::generate_master()
        }
        Err(e) => return Err(e),
    };
    let local = credentials::LocalPolicy::parse(
        args.gateway_env_credentials.as_deref(),
        args.gateway_credential_dir.as_deref(),
    )?;
    // Without a Kubernetes API (local runs, worker pods without a service-account token)
    // kubernetes_secret refs fail closed with E-MCP-005; `awooop serve` in a cluster passes the
    // watched Secret cache (`k8s::secrets::KubeSecrets`).
    let ttl = std::time::Duration::from_secs(args.gateway_credential_ttl_seconds);
    // Model provider API keys follow the same project-bound rules as tool credentials.
    p.model_credentials = std::sync::Arc::new(credentials::CredentialResolver::new(
        secrets.clone(),
        local.clone(),
        ttl,
    ));
    let creds = credentials::CredentialResolver::new(secrets, local, ttl);
    let (audit, _writer) = crate::gateway::audit::CallAudit::spawn_with(
        p.control.db().clone(),
        args.audit_flush_interval(),
    );
    let gw = std::sync::Arc::new(crate::gateway::Gateway::new(
        p.control.db().clone(),
        p.control.coord().clone(),
        GatewayKeys::derive(&master),
        creds,
        std::sync::Arc::new(crate::gateway::upstream::Upstreams::guarded(
            args.upstream.config(),
            p.policy.clone(),
        )),
        audit,
        args.config(),
    ));
    gw.spawn_invalidation(p.control.db());
    p.tools = std::sync::Arc::new(crate::gateway::in_process::InProcessGateway::new(
        gw.clone(),
    ));
    Ok(gw)
}

/// Generate key material, store it in the keyring file (0600) and register the fingerprint.
pub async fn create_signing_key(
    p: &Platform,
    path: &Path,
    project: &ProjectId,
    key_id: &str,
) -> anyhow::Result<Value> {
    let mut ring = if path.exists() {
        Keyring::load(path).map_err(anyhow_err)?
    } else {
        Keyring::default()
    };
    if ring.get(key_id).is_none() {
        ring.insert(key_id, Keyring::generate());
        write_private(path, ring.to_text().as_bytes())?;
    }
    p.control.set_keyring(ring);
    let v = tenancy::scope(
        project.clone(),
        p.control.register_signing_key(&Actor::cli("cli"), key_id),
    )
    .await?;
    Ok(v)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The watched Secret cache when a Kubernetes API is reachable (in-cluster config or a
/// kubeconfig), else `None`: `kubernetes_secret` refs then fail closed with E-MCP-005.
pub(crate) async fn kube_secrets(
    namespace: &str,
) -> Option<std::sync::Arc<dyn crate::gateway::credentials::SecretLookup>> {
    crate::tls::install_crypto_provider();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes API: kubernetes_secret credential refs are unavailable");
            return None;
        }
    };
    let cache = crate::k8s::secrets::KubeSecrets::start(client, namespace);
    // Serve at once; until the first list arrives lookups find nothing and fail closed.
    match tokio::time::timeout(std::time::Duration::from_secs(10), cache.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Secret cache not ready"),
        Err(_) => tracing::warn!("Secret cache not filled within 10 s; continuing"),
    }
    Some(std::sync::Arc::new(cache))
}

pub(crate) fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}

/// A worker of this process and the model budget its LLM calls reserve through. Run it with
/// [`WorkerProcess::run`], which gives the budget leases back when the worker stops.
pub struct WorkerProcess {
    pub worker: std::sync::Arc<crate::runtime::worker::Worker>,
    /// The model proxy's budget (`None` when the proxy is unavailable: no LLM call reserves).
    budget: Option<crate::model::budget::Budget>,
}

impl WorkerProcess {
    /// The budget the worker's model calls reserve through.
    pub fn budget(&self) -> Option<&crate::model::budget::Budget> {
        self.budget.as_ref()
    }

    /// Run the worker until `stop`, then return the unused part of every budget lease. Without
    /// that, a lease outlives the process: it stays reserved (nobody can spend it) until its
    /// ttl passes, and is then charged in full, as if the process had crashed.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) -> crate::error::Result<()> {
        let ran = self.worker.clone().run(stop).await;
        self.shutdown_budget().await;
        ran
    }

    /// Flush settled spend to the ledger and give unused lease slices back (a no-op on the
    /// plain ledger path). Failures are logged: the leases then expire and are charged in full
    /// (fail closed), which is no reason to fail the shutdown itself.
    pub async fn shutdown_budget(&self) {
        if let Some(b) = &self.budget
            && let Err(e) = b.shutdown().await
        {
            tracing::error!(
                code = e.code.as_str(),
                "budget leases not returned at shutdown; they are charged in full when they expire"
            );
        }
    }
}

/// A worker executing scripted and LLM agents; tool calls go through the guarded boundary and
/// then `p.tools` (the MCP gateway after [`attach_gateway`], else every call fails with
/// E-RUN-013); model calls go through the ProviderProxy with local (env/file) credential refs,
/// reserving budget through leases with `--budget-leases`.
pub fn worker_for(
    p: &Platform,
    args: &WorkerArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> WorkerProcess {
    worker_for_project(p, args, metrics, None)
}

/// [`worker_for`], claiming only `project`'s runs when given (`awooop worker --project P`).
pub fn worker_for_project(
    p: &Platform,
    args: &WorkerArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    project: Option<String>,
) -> WorkerProcess {
    use crate::model::breaker::AnomalyCounter;
    use crate::model::executor::{AgentExecutor, LlmExecutor};
    use crate::model::proxy::ProviderProxy;
    use crate::runtime::executor::{GuardedGateway, ScriptedExecutor};
    let tools = p.tools.clone();
    let scripted = ScriptedExecutor::new(GuardedGateway::new(p.control.clone(), tools.clone()));
    let anomalies = AnomalyCounter::new(
        p.control.db().clone(),
        p.control.coord().clone(),
        args.model.anomaly(),
    );
    let llm = match ProviderProxy::new(
        p.control.db().clone(),
        anomalies.clone(),
        p.model_credentials.clone(),
    ) {
        Ok(proxy) => {
            let proxy = match args.model.budget_leases() {
                Some(config) => proxy.with_budget_leases(config),
                None => proxy,
            };
            let budget = proxy.budget().clone();
            let llm = LlmExecutor::new(
                p.control.clone(),
                GuardedGateway::new(p.control.clone(), tools),
                std::sync::Arc::new(proxy.with_egress(p.policy.clone())),
                anomalies,
            );
            Some((llm, budget))
        }
        Err(e) => {
            tracing::error!(
                code = e.code.as_str(),
                "model proxy unavailable; LLM agents fail"
            );
            None
        }
    };
    let (llm, budget) = llm.unzip();
    let executor = std::sync::Arc::new(AgentExecutor::new(scripted, llm));
    let worker = std::sync::Arc::new(
        crate::runtime::worker::Worker::new(
            p.control.db().pool_for_health().clone(),
            p.control.clone(),
            executor,
            {
                let mut cfg = args.config(worker_id());
                // A project-bound worker (the operator's per-project Deployments) claims its
                // successors in the completion's transaction: measured faster with one project
                // and never slower on two machines (docs/benchmarks.md, "Session 28"); an
                // unbound worker does not (no gain with eight tenants, "Session 21").
                cfg.refill_on_complete = project.is_some();
                cfg.project = project;
                cfg
            },
        )
        .with_metrics(metrics),
    );
    WorkerProcess { worker, budget }
}

// --- channel hub (crate awooop-channels) ---

/// The channel hub's secrets: the platform's project-bound credential rules (the same resolver
/// as model provider keys: allow-listed env vars, the per-project credential folder, Secrets
/// labelled for the project).
struct HubSecrets(std::sync::Arc<dyn crate::model::proxy::CredentialResolver>);

#[async_trait::async_trait]
impl crate::channels::ChannelSecrets for HubSecrets {
    async fn resolve(
        &self,
        project: &ProjectId,
        source: &crate::contracts::CredentialSource,
    ) -> Result<crate::channels::Secret, Error> {
        self.0
            .resolve(project, source)
            .await
            .map(|s| crate::channels::Secret::new(s.expose()))
            .map_err(|_| crate::channels::credential_error())
    }
}

/// Build the channel hub of this process and register its metrics in the process's registry
/// (`/metrics`).
pub fn channel_hub(
    p: &Platform,
    args: &crate::config::ChannelArgs,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> crate::channels::Hub {
    let hub = crate::channels::Hub::new(
        p.control.clone(),
        std::sync::Arc::new(HubSecrets(p.model_credentials.clone())),
        args.hub_config(),
    )
    // Mirror mode's forward_to obeys the administrator's egress policy (and `awooop up`'s
    // local loopback allowance), like MCP upstreams and model providers.
    .with_egress(p.policy.clone());
    metrics.register_part("channel", |r| hub.metrics().register(r));
    hub
}
