//! Command-line and environment configuration (clap derive, every flag also an env var).
//!
//! Shared flag groups are flattened into the subcommands that need them. `validate()` checks
//! what clap cannot, at start, with messages that name the flag.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "awooop", version, about = "AwoooP: multi-tenant agent platform", long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "AWOOOP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform locally (HTTP API on 127.0.0.1:8080 and a worker) on an embedded default database.
    Up(UpArgs),
    /// Run a worker that executes runs.
    Worker(WorkerCmdArgs),
    /// Apply database migrations.
    Migrate(DbArgs),
    /// Manage projects (tenants).
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Manage publish signing keys.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCmd),
    /// Validate, draft, publish, approve, activate and inspect contracts.
    #[command(subcommand)]
    Contract(ContractCmd),
    /// Put contract files in force (like `kubectl apply`): draft, publish with a keyring key,
    /// approve as the approvers you hold, activate. Same body again: nothing changes.
    Apply(ApplyArgs),
    /// Create, follow, read and cancel runs.
    #[command(subcommand)]
    Run(RunCmd),
    /// Read a project's audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Show or change a project's migration mode.
    #[command(subcommand)]
    Mode(ModeCmd),
    /// A project's model budget: ledger rows against limits, model breakers, recent
    /// reservations (what `GET /v1/platform/budgets` answers).
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Write (or with --check, verify) the generated contract JSON Schemas.
    Schemas(SchemasArgs),
    /// Print the error-code table as Markdown.
    Errors,
    /// Write (or with --check, verify) the CRD YAML generated from the Rust types.
    Crdgen(CrdgenArgs),
    /// Project active revisions into AgentProject/McpGrant objects: the in-cluster controller,
    /// or with --out DIR the file sink.
    Operator(OperatorArgs),
    /// Serve the HTTP API only (no embedded database, no worker): for clusters.
    Serve(ServeArgs),
    /// Run a benchmark; the last line of output is key=value pairs (built with `--features bench`).
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Mint MCP gateway tokens (per-run bearer tokens, approval tokens).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Platform administrator: the stdio catalog (the only programs the gateway starts).
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Platform administrator: the egress allow-list (where tenants' MCP upstreams and model
    /// providers may be).
    #[command(subcommand)]
    Egress(EgressCmd),
    /// Channel hub: register webhooks, send a test message.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Approval requests of tool calls: list, approve, reject (docs/approvals.md).
    #[command(subcommand)]
    Approval(ApprovalCmd),
    // --- upstream MCP client (gateway/upstream) ---
    /// Test fixture: a minimal MCP server over stdio (--stdio) or Streamable HTTP.
    /// Only with `--features bench` (tests and benchmarks build it; release images do not).
    #[cfg(feature = "bench")]
    #[command(name = "mcp-fixture", hide = true)]
    McpFixture(McpFixtureArgs),
    /// The market-intelligence MCP server of the EwoooC example over stdio (the same server as
    /// the `awooop-market-mcp` binary; `awooop up` registers it in the stdio catalog).
    #[command(name = "market-mcp", hide = true)]
    MarketMcp,
}

/// `awooop mcp-fixture`: the MCP test server of `gateway::upstream::fixture`.
#[derive(Debug, Clone, Args)]
pub struct McpFixtureArgs {
    /// Serve over stdin/stdout instead of HTTP.
    #[arg(long)]
    pub stdio: bool,
    /// HTTP listen address (prints `PORT=<n>` once listening).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Answer with text/event-stream instead of application/json.
    #[arg(long)]
    pub sse: bool,
}

/// `-o json|yaml|name` and `--quiet`, shared by every command that creates something
/// (`cli/output.rs`).
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// Output format: json, yaml, or name (only the value a script needs next: an id, a token,
    /// `kind/name@revision`).
    #[arg(short = 'o', long = "output", value_parser = ["json", "yaml", "name"])]
    pub output: Option<String>,
    /// Print nothing on success (the exit code tells).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Whose approvals `apply` and `project onboard` give (see docs/api.md "apply").
#[derive(Debug, Clone, Args)]
pub struct ApproveArgs {
    /// Approve as these principals (comma-separated), then activate when they are enough.
    /// Default with the local key (`--key-id local`, created by `awooop up`): the approvers the
    /// project's Project contract lists (you hold this machine's platform); otherwise none.
    #[arg(long, value_delimiter = ',')]
    pub approve_as: Vec<String>,
    /// Only draft and publish; approvers approve elsewhere.
    #[arg(long, conflicts_with = "approve_as")]
    pub no_approve: bool,
    /// Keyring key publishes are signed with (registered for the project when missing).
    #[arg(long, default_value = "local")]
    pub key_id: String,
    /// Principal recorded as author, publisher and activator.
    #[arg(long = "as", default_value = "cli")]
    pub actor: String,
}

/// `awooop apply -f FILE|DIR ...`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keyring: KeyringArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Contract file, or a folder of them (`*.json`, not recursive); repeatable. Files name
    /// their project/kind/name in a `# awooop: project=P kind=K name=N` header, or are named
    /// KIND.NAME.json.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Project of files whose header names none.
    #[arg(long)]
    pub project: Option<String>,
    /// Kind of files whose header names none (single files).
    #[arg(long)]
    pub kind: Option<String>,
    /// Name of files whose header names none (single files).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub approve: ApproveArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Start a run of an agent (prints the run; `-o name`: its id).
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        agent: String,
        /// Input as a JSON object (`@FILE` reads a file, `-` standard input).
        #[arg(long, default_value = "{}")]
        input: String,
        /// Mode of the run (never above the project's mode).
        #[arg(long)]
        mode: Option<String>,
        /// Idempotency key: the same key and request return the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it finishes (as `run wait`).
        #[arg(long)]
        wait: bool,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a run with its steps.
    Get {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        run_id: String,
    },
    /// List runs, newest first.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Follow a run: each step as it is journaled, a progress line, the result at the end.
    /// Exit code 0 when it succeeded, 3 when it ended otherwise, 4 on timeout.
    Wait {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        run_id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
    },
    /// Cancel a run that has not finished.
    Cancel {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        run_id: String,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The newest audit rows of a project, oldest first; `--follow` keeps printing new ones.
    Tail {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        /// How many of the newest rows to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep printing rows as they are written (polls once a second).
        #[arg(long)]
        follow: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Owner connection URL (runs migrations). Without it and without --app-database-url:
    /// 127.0.0.1:5432 if it answers, else a private cluster in the state folder. Also read from
    /// the file named by DATABASE_URL_FILE.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Runtime connection URL (a login role that is a member of awooop_app). Default: the owner
    /// URL with `SET ROLE awooop_app` on every connection. Given alone (pods), the process never
    /// sees the owner's URL and runs no migration. Also read from the file named by
    /// AWOOOP_APP_DATABASE_URL_FILE.
    #[arg(long, env = "AWOOOP_APP_DATABASE_URL", hide_env_values = true)]
    pub app_database_url: Option<String>,
    /// Size of the runtime connection pool.
    #[arg(long, env = "AWOOOP_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Folder for local state (private PostgreSQL cluster, admin token, keyring).
    #[arg(long, env = "AWOOOP_STATE_DIR", default_value = ".awooop")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (optional: cache, counters and coordination only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct KeyringArgs {
    /// File of publish signing keys (`key_id:base64` per line). Default: STATE_DIR/keyring.
    #[arg(long, env = "AWOOOP_KEYRING")]
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Runs executed at once by this worker.
    #[arg(long, env = "AWOOOP_WORKER_SLOTS", default_value_t = 16)]
    pub worker_slots: usize,
    /// Lease length cap; a worker missing heartbeats this long loses its runs. The effective
    /// lease is the shorter of this and the project's Runtime contract.
    #[arg(long, env = "AWOOOP_LEASE_SECONDS", default_value_t = 20)]
    pub lease_seconds: u64,
    /// Heartbeat interval (shorter than the lease).
    #[arg(long, env = "AWOOOP_HEARTBEAT_SECONDS", default_value_t = 5)]
    pub heartbeat_seconds: u64,
    /// Fallback poll interval when no notification arrives.
    #[arg(long, env = "AWOOOP_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// The longest a worker waits for a notice after a claim found nothing queued (its
    /// listener up): new and re-queued runs announce themselves.
    #[arg(long, env = "AWOOOP_IDLE_MS", default_value_t = 10_000)]
    pub idle_ms: u64,
    /// Shutdown grace period for in-flight runs.
    #[arg(long, env = "AWOOOP_GRACE_SECONDS", default_value_t = 20)]
    pub grace_seconds: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The model path of workers (LLM agents): anomaly counter thresholds.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Denials, schema failures or provider errors (each kind counted apart) per window that
    /// open the project's model breaker for one window.
    #[arg(long, env = "AWOOOP_MODEL_ANOMALY_THRESHOLD", default_value_t = 50)]
    pub model_anomaly_threshold: u64,
    /// Length of the anomaly counter's window, in seconds.
    #[arg(
        long,
        env = "AWOOOP_MODEL_ANOMALY_WINDOW_SECONDS",
        default_value_t = 300
    )]
    pub model_anomaly_window_seconds: u64,
    /// Reserve model budget through budget leases of this process (docs/model.md, "Budget
    /// leases") instead of one ledger transaction per call. Off by default: a process that dies
    /// holding a lease has its whole slice charged (docs/configuration.md).
    #[arg(long, env = "AWOOOP_BUDGET_LEASES")]
    pub budget_leases: bool,
    /// With --budget-leases: a lease without reservations for this long is given back whole.
    #[arg(
        long,
        env = "AWOOOP_BUDGET_LEASE_IDLE_RETURN_MS",
        default_value_t = 1_000
    )]
    pub budget_lease_idle_return_ms: u64,
}

impl ModelArgs {
    pub fn anomaly(&self) -> crate::model::breaker::AnomalyConfig {
        crate::model::breaker::AnomalyConfig {
            window: std::time::Duration::from_secs(self.model_anomaly_window_seconds.max(1)),
            threshold: self.model_anomaly_threshold.max(1),
        }
    }

    /// The lease tuning when budget leases are on (`None`: the plain ledger path).
    pub fn budget_leases(&self) -> Option<crate::model::budget::lease::LeaseConfig> {
        self.budget_leases
            .then(|| crate::model::budget::lease::LeaseConfig {
                idle_return: std::time::Duration::from_millis(self.budget_lease_idle_return_ms),
                ..Default::default()
            })
    }
}

impl WorkerArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.worker_slots == 0 || self.worker_slots > 10_000 {
            anyhow::bail!("--worker-slots (AWOOOP_WORKER_SLOTS) must be 1..=10000");
        }
        if self.heartbeat_seconds == 0 || self.heartbeat_seconds >= self.lease_seconds {
            anyhow::bail!(
                "--heartbeat-seconds must be at least 1 and shorter than --lease-seconds"
            );
        }
        Ok(())
    }

    pub fn config(&self, id: String) -> crate::runtime::worker::WorkerConfig {
        let mut c = crate::runtime::worker::WorkerConfig::new(id);
        c.slots = self.worker_slots;
        c.lease = std::time::Duration::from_secs(self.lease_seconds);
        c.heartbeat = std::time::Duration::from_secs(self.heartbeat_seconds);
        c.poll = std::time::Duration::from_millis(self.poll_ms);
        c.idle = std::time::Duration::from_millis(self.idle_ms.max(self.poll_ms));
        c.grace = std::time::Duration::from_secs(self.grace_seconds);
        c
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerCmdArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Claim only this project's runs (the operator's per-project worker Deployments).
    #[arg(long, env = "AWOOOP_WORKER_PROJECT")]
    pub project: Option<String>,
    /// Folder of the project's credential files (`<secret>/<key>`) that the operator has
    /// Kubernetes mount into worker pods: `kubernetes_secret` refs resolve from it. Needs
    /// `--project`. Unset: those refs fail closed (E-MCP-005).
    #[arg(long, env = "AWOOOP_WORKER_CREDENTIALS_DIR", requires = "project")]
    pub credentials_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub channels: ChannelArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// Address of the HTTP API.
    #[arg(long, env = "AWOOOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Platform admin token. Default: generated once into STATE_DIR/admin-token.
    #[arg(long, env = "AWOOOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "AWOOOP_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Onboard a tenant from this folder of contracts at start (as `awooop project onboard`,
    /// approved as the local platform); repeatable, comma-separated in the env var. Idempotent:
    /// an unchanged folder changes nothing.
    #[arg(long = "onboard", env = "AWOOOP_UP_ONBOARD", value_delimiter = ',')]
    pub onboard: Vec<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub channels: ChannelArgs,
}

impl UpArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_body_bytes < 1024 {
            anyhow::bail!("--max-body-bytes (AWOOOP_MAX_BODY_BYTES) must be at least 1024");
        }
        if let Some(t) = &self.admin_token
            && t.len() < 32
        {
            anyhow::bail!("--admin-token (AWOOOP_ADMIN_TOKEN) must be at least 32 characters");
        }
        self.worker.validate()?;
        self.gateway.validate()?;
        self.channels.validate()?;
        validate_db(&self.db)?;
        validate_redis(&self.redis)
    }
}

pub fn validate_db(db: &DbArgs) -> anyhow::Result<()> {
    if db.db_max_connections == 0 || db.db_max_connections > 1000 {
        anyhow::bail!("--db-max-connections (AWOOOP_DB_MAX_CONNECTIONS) must be 1..=1000");
    }
    for (flag, url) in [
        ("--database-url (DATABASE_URL)", &db.database_url),
        (
            "--app-database-url (AWOOOP_APP_DATABASE_URL)",
            &db.app_database_url,
        ),
    ] {
        if let Some(u) = url
            && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            anyhow::bail!("{flag} must be a postgres:// URL");
        }
    }
    Ok(())
}

pub fn validate_redis(r: &RedisArgs) -> anyhow::Result<()> {
    if let Some(u) = &r.redis_url
        && redis::Client::open(u.as_str()).is_err()
    {
        anyhow::bail!("--redis-url (REDIS_URL) is not a valid redis:// URL");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project (starts in shadow mode).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// Project id (^[a-z][a-z0-9-]{1,62}$).
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Distinct approvers needed to activate a revision.
        #[arg(long, default_value_t = 2)]
        required_approvals: i32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Onboard a tenant from a folder: create the project when missing, then apply its
    /// contracts (the Project contract first). Idempotent and resumable: run it again after
    /// any failure.
    Onboard {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keyring: KeyringArgs,
        #[command(flatten)]
        redis: RedisArgs,
        /// Folder of contract files (see `awooop apply`).
        #[arg(long)]
        from: PathBuf,
        /// Project id (default: the project the files' headers name).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        approve: ApproveArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List projects.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Revoke an API key (it stops authenticating at once).
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        key_id: String,
    },
    /// Create an API key; the token is printed once.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        /// Principal name the key acts as (approvals are counted per principal).
        #[arg(long, default_value = "api")]
        principal: String,
        /// Comma-separated roles.
        #[arg(
            long,
            default_value = "reader,author,publisher,approver,activator,runner",
            value_delimiter = ','
        )]
        roles: Vec<String>,
        /// Runner keys: comma-separated agents the key may act for (`*`: any, deliberately).
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Runner keys: comma-separated environments the key may act in (`*`: any).
        #[arg(long = "envs", value_delimiter = ',')]
        environments: Vec<String>,
        /// `-o name` prints the token alone.
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCmd {
    /// Generate key material into the keyring file and register its fingerprint for a project.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keyring: KeyringArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ContractTarget {
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ContractCmd {
    /// Validate a contract file (no database needed).
    Validate {
        #[arg(long)]
        kind: String,
        /// JSON file, or - for standard input.
        file: PathBuf,
    },
    /// Create a draft from a file.
    Draft {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        target: ContractTarget,
        file: PathBuf,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
        /// `-o name` prints the draft id.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sign a draft with a keyring key and publish it.
    Publish {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keyring: KeyringArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        draft: String,
        #[arg(long)]
        key_id: String,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
        /// `-o name` prints the revision id.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Approve a published revision as a named approver.
    Approve {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        revision: String,
        #[arg(long = "as")]
        actor: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Activate an approved revision (an earlier one = rollback).
    Activate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        revision: String,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
        /// `-o name` prints the activation id.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show the active revision, or a given revision number.
    Show {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        target: ContractTarget,
        #[arg(long)]
        revision: Option<i32>,
    },
    /// Unified diff of two revisions.
    Diff {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        target: ContractTarget,
        #[arg(long)]
        from: i32,
        #[arg(long)]
        to: i32,
    },
    /// Revisions and activations of a contract.
    History {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        target: ContractTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModeCmd {
    /// Show the mode and its history.
    Show {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
    },
    /// Move to another mode (one step, or --force with --reason).
    Set {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        mode: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "as", default_value = "cli")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// The project's budget ledger (spend and reservations against limits per scope and
    /// period), its model breakers (project and per provider: failures, open until, reason)
    /// and its most recent reservations, as JSON. Only that project's rows, ever.
    Show {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
    },
}

#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Output folder.
    #[arg(long, default_value = "operator/schemas")]
    pub out: PathBuf,
    /// Fail if the committed files differ from the generated ones instead of writing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Write the manifests into this folder and exit (GitOps, or no cluster). Without it: run
    /// the in-cluster controller.
    #[arg(long, env = "AWOOOP_OPERATOR_OUT")]
    pub out: Option<PathBuf>,
    /// Namespace of the projected objects and worker Deployments. Default: the pod's namespace
    /// (POD_NAMESPACE), else `awooop`.
    #[arg(long, env = "AWOOOP_NAMESPACE")]
    pub namespace: Option<String>,
    /// The pod's namespace (downward API), used when AWOOOP_NAMESPACE is not set.
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,
    /// Leader election with a coordination.k8s.io Lease (disable only with one replica).
    #[arg(long, env = "AWOOOP_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "AWOOOP_LEASE_NAME", default_value = "awooop-operator")]
    pub lease_name: String,
    /// Lease holder identity (the pod name, from the downward API). Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Full resync period: a missed notification delays a projection at most this long.
    #[arg(long, env = "AWOOOP_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// Image of the worker Deployments (`awooop worker --project P`). Without it the operator
    /// runs no workers (WorkersReady is Unknown).
    #[arg(long, env = "AWOOOP_WORKER_IMAGE")]
    pub worker_image: Option<String>,
    /// Secret (key `database-url`) given to worker pods as DATABASE_URL.
    #[arg(
        long,
        env = "AWOOOP_WORKER_DB_SECRET",
        default_value = "awooop-database"
    )]
    pub worker_db_secret: String,
    /// Most worker replicas any project gets, whatever its Project contract says.
    #[arg(long, env = "AWOOOP_WORKER_MAX_REPLICAS", default_value_t = 10)]
    pub worker_max_replicas: i32,
    /// Concurrent runs per worker pod (its AWOOOP_WORKER_SLOTS).
    #[arg(long, env = "AWOOOP_WORKER_POD_SLOTS", default_value_t = 16)]
    pub worker_pod_slots: u32,
    /// Database connections per worker pod (its AWOOOP_DB_MAX_CONNECTIONS).
    #[arg(long, env = "AWOOOP_WORKER_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub worker_db_max_connections: u32,
    /// CPU request of each worker pod.
    #[arg(long, env = "AWOOOP_WORKER_CPU_REQUEST", default_value = "100m")]
    pub worker_cpu_request: String,
    /// CPU limit of each worker pod.
    #[arg(long, env = "AWOOOP_WORKER_CPU_LIMIT", default_value = "1")]
    pub worker_cpu_limit: String,
    /// Memory request of each worker pod.
    #[arg(long, env = "AWOOOP_WORKER_MEMORY_REQUEST", default_value = "128Mi")]
    pub worker_memory_request: String,
    /// Memory limit of each worker pod.
    #[arg(long, env = "AWOOOP_WORKER_MEMORY_LIMIT", default_value = "512Mi")]
    pub worker_memory_limit: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "AWOOOP_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
}

impl OperatorArgs {
    /// AWOOOP_NAMESPACE, else POD_NAMESPACE, else `awooop`.
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| self.pod_namespace.clone())
            .unwrap_or_else(|| "awooop".into())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        validate_db(&self.db)?;
        if self.resync_seconds == 0 || self.resync_seconds > 86_400 {
            anyhow::bail!("--resync-seconds (AWOOOP_RESYNC_SECONDS) must be 1..=86400");
        }
        if self.out.is_none() && self.db.database_url.is_none() {
            anyhow::bail!("the in-cluster controller needs --database-url (DATABASE_URL)");
        }
        if !(1..=1000).contains(&self.worker_max_replicas)
            || !(1..=1024).contains(&self.worker_pod_slots)
            || !(1..=1000).contains(&self.worker_db_max_connections)
        {
            anyhow::bail!(
                "--worker-max-replicas (1..=1000), --worker-pod-slots (1..=1024) and --worker-db-max-connections (1..=1000) are out of range"
            );
        }
        if self.lease_name.is_empty() || self.worker_db_secret.is_empty() {
            anyhow::bail!(
                "--lease-name (AWOOOP_LEASE_NAME) and --worker-db-secret (AWOOOP_WORKER_DB_SECRET) must not be empty"
            );
        }
        Ok(())
    }
}

/// `awooop serve`: the HTTP API alone (no embedded PostgreSQL, no worker), for clusters.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// Address of the HTTP API.
    #[arg(long, env = "AWOOOP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Platform admin token (required, at least 32 characters).
    #[arg(long, env = "AWOOOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "AWOOOP_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Namespace whose Secrets (labelled `awooop.dev/project`) back `kubernetes_secret`
    /// credential refs. Default: the pod's namespace (`POD_NAMESPACE`), else `awooop`. Used only
    /// when a Kubernetes API is reachable (in-cluster config or kubeconfig).
    #[arg(long, env = "AWOOOP_SECRETS_NAMESPACE")]
    pub secrets_namespace: Option<String>,
    /// The MCP gateway served at /mcp (its key is required: tokens and sessions must verify on
    /// every replica).
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub channels: ChannelArgs,
}

impl ServeArgs {
    /// Namespace of the Secrets the gateway may resolve.
    pub fn secrets_namespace(&self) -> String {
        self.secrets_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "awooop".to_string())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.db.database_url.is_none() && self.db.app_database_url.is_none() {
            anyhow::bail!(
                "awooop serve needs --app-database-url (AWOOOP_APP_DATABASE_URL, the runtime role; migrations then run apart with `awooop migrate`) or --database-url (DATABASE_URL): it never starts an embedded database"
            );
        }
        match &self.admin_token {
            None => anyhow::bail!("awooop serve needs --admin-token (AWOOOP_ADMIN_TOKEN)"),
            Some(t) if t.len() < 32 => {
                anyhow::bail!("--admin-token (AWOOOP_ADMIN_TOKEN) must be at least 32 characters")
            }
            Some(_) => {}
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!("--max-body-bytes (AWOOOP_MAX_BODY_BYTES) must be at least 1024");
        }
        if self.gateway.gateway_key.is_none() {
            anyhow::bail!(
                "awooop serve needs --gateway-key (AWOOOP_GATEWAY_KEY): every replica must verify the same tokens and sessions"
            );
        }
        self.gateway.validate()?;
        self.channels.validate()?;
        validate_db(&self.db)?;
        validate_redis(&self.redis)
    }
}

#[derive(Debug, Args)]
pub struct CrdgenArgs {
    /// Output folder.
    #[arg(long, default_value = "crds")]
    pub out: PathBuf,
    /// The Helm chart's copy of the same files (Helm installs CRDs from the chart's crds/).
    #[arg(long, default_value = "charts/awooop/crds")]
    pub chart_out: PathBuf,
    /// Fail if the committed files differ from the generated ones instead of writing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark.
    #[arg(value_parser = ["contracts", "runs", "budget", "projection", "gateway", "channels", "approvals", "events", "idle", "redact"])]
    pub area: String,
    /// Finish within 30 seconds.
    #[arg(long)]
    pub quick: bool,
    /// Number of runs (bench runs).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Number of workers (bench runs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Number of projects (bench projection: each gets 10 grants; bench runs: also drain the
    /// runs spread over that many projects, each capped at 64 concurrent runs, once with the
    /// shared workers and once with one worker bound to each project; bench idle: that many
    /// idle project-bound worker processes).
    #[arg(long)]
    pub projects: Option<usize>,
    /// bench projection: against a real kube-apiserver and etcd started from the folder in
    /// KUBEBUILDER_ASSETS (see docs/kubernetes.md) instead of the in-process fake.
    #[arg(long)]
    pub apiserver: bool,
    /// bench budget: run as one of the racing worker processes (spawned by the bench and the
    /// multi-process cap test; prints one JSON line).
    #[command(flatten)]
    pub budget_worker: BudgetWorkerArgs,
    /// bench runs: also drain the same number of no-op jobs with graphile-worker 0.17.3 (its
    /// documented throughput settings, 10 concurrent) on a scratch database of the same
    /// PostgreSQL, via scripts/bench-runs-peer.sh (needs node and npm), and print the ratio.
    #[arg(long)]
    pub peer: bool,
    /// bench runs: hold a snapshot (a REPEATABLE READ transaction in the `postgres` database of
    /// the same server) through the measurements, as a pg_dump, a report or a session idle in a
    /// transaction does: the queue's dead entries then stay in its index (docs/benchmarks.md,
    /// "Session 32"). The peer (`--peer`) drains under it too.
    #[arg(long)]
    pub held_snapshot: bool,
    /// bench gateway: measure against this external MCP server (Streamable HTTP URL, e.g. an
    /// `awooop mcp-fixture` process) instead of the in-process fixture. It must serve the
    /// `blob {size}` tool; the gateway injects a Bearer credential it may ignore.
    #[arg(long)]
    pub upstream: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Hidden flags of `awooop bench budget --worker`: one process of the multi-process race.
#[derive(Debug, Args, Clone, Default)]
pub struct BudgetWorkerArgs {
    /// Act as a worker process instead of running the benchmark.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// The (existing) project to reserve in.
    #[arg(long, hide = true, default_value = "bench")]
    pub worker_project: String,
    /// Concurrent callers in this process, one reservation each.
    #[arg(long, hide = true, default_value_t = 1)]
    pub worker_callers: usize,
    /// Tokens each caller reserves (and then reports as its usage).
    #[arg(long, hide = true, default_value_t = 1_000)]
    pub worker_tokens: u64,
    /// The project's daily token limit.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub worker_limit: u64,
    /// Start the callers at this Unix time in milliseconds (so processes race).
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_start_ms: u64,
    /// How long each admitted caller holds its reservation before settling.
    #[arg(long, hide = true, default_value_t = 20)]
    pub worker_hold_ms: u64,
    /// Lease time to live in milliseconds.
    #[arg(long, hide = true, default_value_t = 30_000)]
    pub worker_lease_ttl_ms: u64,
    /// Exit without settling or giving leases back (a crashed process).
    #[arg(long, hide = true)]
    pub worker_crash: bool,
}

// --- platform policy (operator/src/platform/) ---

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Add or replace a stdio catalog entry.
    Add {
        #[command(flatten)]
        db: DbArgs,
        /// Entry name contracts refer to (^[a-z][a-z0-9-]{0,62}$).
        #[arg(long)]
        name: String,
        /// Program to start (absolute path, or a name in the platform's PATH).
        #[arg(long)]
        command: String,
        /// One argument (repeat for more).
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// An environment variable contracts may inject a credential into (repeat for more).
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the catalog.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove an entry (no new child starts; running ones end at idle timeout or rotation).
    Remove {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EgressCmd {
    /// Allow a destination: a DNS name, `*.suffix`, or an IP network in CIDR notation (the only
    /// way to allow loopback, link-local, private or metadata addresses).
    Allow {
        #[command(flatten)]
        db: DbArgs,
        /// The project the rule is for.
        #[arg(long)]
        project: Option<String>,
        /// The rule is for every project.
        #[arg(long)]
        all_projects: bool,
        host: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the rules.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a rule by id.
    Remove {
        #[command(flatten)]
        db: DbArgs,
        rule_id: uuid::Uuid,
    },
}

// --- MCP gateway (operator/src/gateway/) ---

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Secret the gateway derives the keys of per-run tokens, session ids and approval tokens
    /// from (at least 32 characters). Default for `awooop up`: generated once into
    /// STATE_DIR/gateway-key.
    #[arg(long, env = "AWOOOP_GATEWAY_KEY", hide_env_values = true)]
    pub gateway_key: Option<String>,
    /// Environment-variable credentials projects may use, as `project:VARIABLE,...`; a ref to
    /// any other variable fails (E-MCP-005).
    #[arg(long, env = "AWOOOP_GATEWAY_ENV_CREDENTIALS")]
    pub gateway_env_credentials: Option<String>,
    /// Folder of file credentials: project P may only read files under DIR/P/.
    #[arg(long, env = "AWOOOP_GATEWAY_CREDENTIAL_DIR")]
    pub gateway_credential_dir: Option<PathBuf>,
    /// How long resolved credential values are cached (rotation is picked up after it).
    #[arg(
        long,
        env = "AWOOOP_GATEWAY_CREDENTIAL_TTL_SECONDS",
        default_value_t = 30
    )]
    pub gateway_credential_ttl_seconds: u64,
    /// How long a project's gate facts (status, mode, registry, agents) and its verified API
    /// keys are cached. Every change
    /// of them notifies `awooop_activation` and drops them at once, and all of them are dropped
    /// whenever the listener was not listening: this bounds staleness only if the listener's
    /// connection hangs without failing.
    #[arg(long, env = "AWOOOP_GATEWAY_CACHE_TTL_MS", default_value_t = 30_000)]
    pub gateway_cache_ttl_ms: u64,
    /// How long `/mcp` reuses a run's liveness for a token bound to the run: a token of a run
    /// that has ended is refused within it (a run's end is not notified to the gateway).
    #[arg(
        long,
        env = "AWOOOP_GATEWAY_RUN_LIVENESS_TTL_MS",
        default_value_t = 1000
    )]
    pub gateway_run_liveness_ttl_ms: u64,
    /// Timeout of one upstream tool call.
    #[arg(
        long,
        env = "AWOOOP_GATEWAY_UPSTREAM_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub gateway_upstream_timeout_seconds: u64,
    /// Tool calls per minute per (project, agent) and process; 0 disables the limit.
    #[arg(long, env = "AWOOOP_GATEWAY_RATE_PER_MINUTE", default_value_t = 60_000)]
    pub gateway_rate_per_minute: u32,
    /// Environment of the runs this process's workers execute (gate 4).
    #[arg(
        long,
        env = "AWOOOP_GATEWAY_RUNTIME_ENVIRONMENT",
        default_value = "dev"
    )]
    pub gateway_runtime_environment: String,
    /// Longest a tool call's audit row waits before its batch is written (1–60000 ms). Rows
    /// are written in batches of up to 512 per transaction; shorter intervals spread
    /// PostgreSQL's work into smaller bursts (a lower latency tail where PostgreSQL shares the
    /// gateway's cores) at the cost of more, smaller transactions. A row is in memory until
    /// its batch is written: on a crash, the rows of the last interval are lost.
    #[arg(long, env = "AWOOOP_GATEWAY_AUDIT_FLUSH_MS", default_value_t = 10)]
    pub gateway_audit_flush_ms: u64,
    /// Origins allowed to call /mcp from a browser (comma-separated); requests without an
    /// Origin header are unaffected.
    #[arg(long, env = "AWOOOP_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub gateway_allowed_origins: Vec<String>,
    /// The MCP client toward upstream tool servers (sessions, children, limits).
    #[command(flatten)]
    pub upstream: crate::gateway::upstream::UpstreamArgs,
}

impl GatewayArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(k) = &self.gateway_key
            && k.len() < crate::gateway::keys::MIN_KEY_BYTES
        {
            anyhow::bail!("--gateway-key (AWOOOP_GATEWAY_KEY) must be at least 32 characters");
        }
        crate::gateway::credentials::LocalPolicy::parse(
            self.gateway_env_credentials.as_deref(),
            None,
        )
        .map_err(|e| anyhow::anyhow!("--gateway-env-credentials: {}", e.message))?;
        if !crate::gateway::tokens::slug_ok(&self.gateway_runtime_environment) {
            anyhow::bail!("--gateway-runtime-environment must be a slug");
        }
        if self.gateway_upstream_timeout_seconds == 0 {
            anyhow::bail!("--gateway-upstream-timeout-seconds must be at least 1");
        }
        if !(1..=60_000).contains(&self.gateway_audit_flush_ms) {
            anyhow::bail!("--gateway-audit-flush-ms must be between 1 and 60000");
        }
        Ok(())
    }

    pub fn config(&self) -> crate::gateway::GatewayConfig {
        crate::gateway::GatewayConfig {
            cache_ttl: std::time::Duration::from_millis(self.gateway_cache_ttl_ms),
            run_liveness_ttl: std::time::Duration::from_millis(self.gateway_run_liveness_ttl_ms),
            upstream_timeout: std::time::Duration::from_secs(self.gateway_upstream_timeout_seconds),
            rate_per_minute: self.gateway_rate_per_minute,
            runtime_environment: self.gateway_runtime_environment.clone(),
        }
    }

    /// The call audit writer's interval (see `gateway_audit_flush_ms`).
    pub fn audit_flush_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.gateway_audit_flush_ms)
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print a per-run bearer token for a local agent or test (`Authorization: Bearer ...` on /mcp).
    Mint {
        #[arg(long)]
        project: String,
        #[arg(long)]
        agent: String,
        /// Environment the token is bound to (gate 4).
        #[arg(long = "env", default_value = "dev")]
        environment: String,
        /// Run id the token is bound to (approval tokens must name the same run).
        #[arg(long)]
        run: Option<uuid::Uuid>,
        /// Mode of the run (never above the project's mode); default: the project's mode.
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
        #[arg(long, env = "AWOOOP_STATE_DIR", default_value = ".awooop")]
        state_dir: PathBuf,
        #[arg(long, env = "AWOOOP_GATEWAY_KEY", hide_env_values = true)]
        gateway_key: Option<String>,
    },
    /// Print an approval token (HS256 JWT) for one tool call with these exact arguments.
    Approve {
        #[arg(long)]
        project: String,
        /// The agent making the call (the token is bound to it).
        #[arg(long)]
        agent: String,
        /// The environment of the call (the token is bound to it).
        #[arg(long = "env")]
        environment: String,
        /// Exposed tool name `{provider}__{tool}`.
        #[arg(long)]
        tool: String,
        /// The exact arguments (JSON object) the approval covers.
        #[arg(long)]
        arguments: String,
        /// Run id of the call (omit for calls outside a run).
        #[arg(long)]
        run: Option<uuid::Uuid>,
        #[arg(long)]
        approver: String,
        #[arg(long, default_value_t = 900)]
        ttl_seconds: i64,
        /// Break-glass: the token is printed only after an `approval.break_glass` audit row
        /// naming the approver, tool, argument hash and token id is committed in the project.
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, env = "AWOOOP_GATEWAY_KEY", hide_env_values = true)]
        gateway_key: Option<String>,
    },
}

// --- approvals (operator/runtime/src/approvals.rs) ---

#[derive(Debug, Subcommand)]
pub enum ApprovalCmd {
    /// List a project's approval requests (newest first).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        /// pending, approved, rejected or expired (default: all).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Approve a request as an approver principal (counts once; M-of-N from the Project contract).
    Approve(ApprovalDecisionArgs),
    /// Reject a request (one reject rejects: the run fails with E-APPROVAL-001).
    Reject(ApprovalDecisionArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ApprovalDecisionArgs {
    /// The approval request id.
    pub id: uuid::Uuid,
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub project: String,
    /// The approver principal deciding (must be in the Project contract's acl.approvers
    /// when that list is not empty).
    #[arg(long = "as")]
    pub approver: String,
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

// --- channel hub (operator/src/channels/) ---

/// Channel hub settings: provider API base URLs and the webhook body limit.
#[derive(Debug, Clone, Args)]
pub struct ChannelArgs {
    /// Telegram Bot API base URL (requests go to BASE/bot<token>/<method>).
    #[arg(
        long,
        env = "AWOOOP_TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,
    /// LINE Messaging API base URL.
    #[arg(
        long,
        env = "AWOOOP_LINE_API_URL",
        default_value = "https://api.line.me"
    )]
    pub line_api_url: String,
    /// Slack Web API base URL.
    #[arg(
        long,
        env = "AWOOOP_SLACK_API_URL",
        default_value = "https://slack.com/api"
    )]
    pub slack_api_url: String,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "AWOOOP_CHANNEL_MAX_BODY_BYTES", default_value_t = 262_144)]
    pub channel_max_body_bytes: usize,
}

impl ChannelArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (flag, url) in [
            ("--telegram-api-url", &self.telegram_api_url),
            ("--line-api-url", &self.line_api_url),
            ("--slack-api-url", &self.slack_api_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
                anyhow::bail!("{flag} must be an http(s) URL without a trailing slash");
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.channel_max_body_bytes) {
            anyhow::bail!("--channel-max-body-bytes must be between 1024 and 16777216");
        }
        Ok(())
    }

    pub fn hub_config(&self) -> crate::channels::HubConfig {
        crate::channels::HubConfig {
            max_body_bytes: self.channel_max_body_bytes,
            urls: crate::channels::ProviderUrls {
                telegram: self.telegram_api_url.clone(),
                line: self.line_api_url.clone(),
                slack: self.slack_api_url.clone(),
            },
            ..crate::channels::HubConfig::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    /// Register a channel's webhook: Telegram `setWebhook` with its secret token (generated into
    /// the channel's verify_secret file ref under AWOOOP_GATEWAY_CREDENTIAL_DIR/P/ when that
    /// does not resolve yet), and what to configure for LINE and Slack.
    Register {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        channel: String,
        /// Public base URL the provider reaches the platform at (https://...).
        #[arg(long)]
        public_url: String,
        #[command(flatten)]
        channels: ChannelArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Send a test message through a channel.
    Test {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        channel: String,
        /// Chat / conversation id to send to.
        #[arg(long)]
        conversation: String,
        #[arg(long, default_value = "AwoooP channel test")]
        text: String,
        #[command(flatten)]
        channels: ChannelArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn worker(extra: &[&str]) -> WorkerCmdArgs {
        let args = ["awooop", "worker"].iter().chain(extra).copied();
        match Cli::try_parse_from(args).unwrap().command {
            Command::Worker(w) => w,
            _ => unreachable!("parsed as the worker command"),
        }
    }

    /// The audit interval flag defaults to the writer's own default and refuses 0 (a writer
    /// that would spin) and more than a minute (rows held that long are lost in a crash).
    #[test]
    fn the_audit_flush_interval_has_the_writers_default_and_bounds() {
        if std::env::var_os("AWOOOP_GATEWAY_AUDIT_FLUSH_MS").is_some() {
            return; // the environment decides; nothing to check about the default
        }
        let g = worker(&[]).gateway;
        assert_eq!(
            g.audit_flush_interval(),
            crate::gateway::audit::DEFAULT_FLUSH_INTERVAL
        );
        g.validate().expect("the default is valid");
        for (v, ok) in [("0", false), ("1", true), ("60000", true), ("60001", false)] {
            let g = worker(&["--gateway-audit-flush-ms", v]).gateway;
            assert_eq!(g.validate().is_ok(), ok, "{v}");
        }
    }

    /// Budget leases are opt-in (docs/configuration.md says why); the flag turns them on with
    /// the default tuning except the idle return it sets.
    #[test]
    fn budget_leases_are_off_unless_asked_for() {
        if std::env::var_os("AWOOOP_BUDGET_LEASES").is_some() {
            return; // the environment decides; nothing to check about the default
        }
        assert!(worker(&[]).worker.model.budget_leases().is_none());
        let on = worker(&["--budget-leases", "--budget-lease-idle-return-ms", "250"])
            .worker
            .model
            .budget_leases()
            .expect("leases on");
        assert_eq!(on.idle_return, std::time::Duration::from_millis(250));
        assert_eq!(on.ttl, std::time::Duration::from_secs(30));
    }
}
