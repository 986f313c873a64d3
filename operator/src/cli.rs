//! The `awooop` subcommands. Each command is a thin shell over the same service the HTTP API
//! uses; output is JSON on stdout, errors are JSON `{code, message, details}` on stderr.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::{Actor, AdminToken, Role};
use crate::config::*;
use crate::contracts::{self, ContractKind, signing::Keyring};
use crate::control::{ControlPlane, MigrationMode, NewProject};
use crate::coord::Coord;
use crate::error::{Error, ErrorCode};
use crate::local::{self, LocalPostgres};
use crate::tenancy::{self, Db, ProjectId};
use crate::{db, http};

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
        let pg = local::resolve(db_args.database_url.as_deref(), &db_args.state_dir).await?;
        db::migrate(&pg.url).await.map_err(anyhow_err)?;
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
        Ok(Self {
            control: ControlPlane::new(Db::new(pool), coord, keyring),
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

fn keyring_path(k: Option<&KeyringArgs>, state_dir: &Path) -> PathBuf {
    k.and_then(|k| k.keyring.clone())
        .unwrap_or_else(|| state_dir.join("keyring"))
}

fn load_keyring(k: Option<&KeyringArgs>, state_dir: &Path) -> anyhow::Result<Keyring> {
    let path = keyring_path(k, state_dir);
    if path.exists() {
        Keyring::load(&path).map_err(anyhow_err)
    } else {
        Ok(Keyring::default())
    }
}

fn anyhow_err(e: Error) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code, e.message)
}

fn print<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Run a command; service errors are printed as JSON and turned into exit code 2.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let res = dispatch(cli.command).await;
    match res {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast::<Error>() {
            Ok(err) => {
                eprintln!(
                    "{}",
                    serde_json::to_string_pretty(&crate::error::error_json(&err))?
                );
                Ok(2)
            }
            Err(other) => Err(other),
        },
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Up(args) => up(args).await,
        Command::Worker(args) => {
            args.worker.validate()?;
            args.gateway.validate()?;
            let project = match &args.project {
                Some(id) => Some(ProjectId::parse(id)?.to_string()),
                None => None,
            };
            let mut p = Platform::connect(&args.db, Some(&args.redis), None).await?;
            let gw = attach_gateway(&mut p, &args.gateway, false, None)?;
            let worker =
                worker_for_project(&p, &args.worker, crate::metrics::Metrics::new(), project);
            let (tx, rx) = crate::runtime::worker::shutdown_channel();
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            });
            eprintln!(
                "worker {} running ({} slots)",
                worker_id(),
                args.worker.worker_slots
            );
            let hub = channel_hub(&p, &args.channels, &crate::metrics::Metrics::new());
            let delivery = tokio::spawn(
                crate::channels::delivery::DeliveryWorker::new(hub, Default::default())
                    .run(rx.clone()),
            );
            worker.run(rx).await?;
            let _ = delivery.await;
            // Every queued call-audit row is written before exit.
            gw.audit().flush().await;
            Ok(())
        }
        Command::Migrate(dbargs) => {
            validate_db(&dbargs)?;
            let pg = local::resolve(dbargs.database_url.as_deref(), &dbargs.state_dir).await?;
            db::migrate(&pg.url).await.map_err(anyhow_err)?;
            eprintln!("migrations applied ({})", pg.source);
            Ok(())
        }
        Command::Project(ProjectCmd::Create {
            db,
            id,
            name,
            required_approvals,
        }) => {
            let p = Platform::connect(&db, None, None).await?;
            let display_name = name.unwrap_or_else(|| id.clone());
            let v = p
                .control
                .create_project(
                    &Actor::cli("cli"),
                    NewProject {
                        project_id: id,
                        display_name,
                        required_approvals: Some(required_approvals),
                    },
                )
                .await?;
            print(&v)
        }
        Command::Project(ProjectCmd::List { db }) => {
            let p = Platform::connect(&db, None, None).await?;
            print(&p.control.list_projects(&Actor::cli("cli")).await?)
        }
        Command::Apikey(ApikeyCmd::Create {
            db,
            project,
            principal,
            roles,
        }) => {
            let p = Platform::connect(&db, None, None).await?;
            let roles = roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            let project = ProjectId::parse(&project)?;
            print(
                &p.control
                    .create_api_key(&Actor::cli("cli"), &project, &principal, roles)
                    .await?,
            )
        }
        Command::Apikey(ApikeyCmd::Revoke {
            db,
            project,
            key_id,
        }) => {
            let p = Platform::connect(&db, None, None).await?;
            tenancy::scope(
                ProjectId::parse(&project)?,
                p.control.revoke_api_key(&Actor::cli("cli"), &key_id),
            )
            .await?;
            eprintln!("revoked");
            Ok(())
        }
        Command::SigningKey(SigningKeyCmd::Create {
            db,
            keyring,
            project,
            key_id,
        }) => {
            let p = Platform::connect(&db, None, Some(&keyring)).await?;
            let path = keyring_path(Some(&keyring), &p.state_dir);
            let v = create_signing_key(&p, &path, &ProjectId::parse(&project)?, &key_id).await?;
            print(&v)
        }
        Command::Contract(c) => contract(c).await,
        Command::Mode(ModeCmd::Show { db, project }) => {
            let p = Platform::connect(&db, None, None).await?;
            print(&tenancy::scope(ProjectId::parse(&project)?, p.control.migration()).await?)
        }
        Command::Mode(ModeCmd::Set {
            db,
            project,
            mode,
            force,
            reason,
            actor,
        }) => {
            let p = Platform::connect(&db, None, None).await?;
            let to = MigrationMode::parse(&mode)?;
            let v = tenancy::scope(
                ProjectId::parse(&project)?,
                p.control
                    .set_mode(&Actor::cli(&actor), to, force, reason.as_deref()),
            )
            .await?;
            print(&v)
        }
        Command::Schemas(a) => schemas(&a.out, a.check),
        Command::Crdgen(a) => crdgen(&[a.out, a.chart_out], a.check),
        Command::Operator(a) => {
            a.validate()?;
            let p = Platform::connect(&a.db, None, None).await?;
            let Some(out) = &a.out else {
                return crate::k8s::runtime::run_in_cluster(p.control.clone(), &a).await;
            };
            let w = crate::k8s::sink::export(&p.control, out, &a.namespace()).await?;
            eprintln!(
                "projected {} project(s) and {} grant(s) into {}; removed {} stale file(s)",
                w.projects,
                w.grants,
                out.display(),
                w.removed
            );
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Errors => {
            print!("{}", crate::error::markdown_table());
            Ok(())
        }
        Command::Bench(b) => crate::bench::run(b).await,
        Command::Token(t) => token(t),
        Command::McpFixture(a) => mcp_fixture(a).await,
        Command::Channel(c) => channel_cmd(c).await,
    }
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
    let (audit, _writer) = crate::gateway::audit::CallAudit::spawn(p.control.db().clone());
    let gw = std::sync::Arc::new(crate::gateway::Gateway::new(
        p.control.db().clone(),
        p.control.coord().clone(),
        GatewayKeys::derive(&master),
        creds,
        std::sync::Arc::new(crate::gateway::upstream::Upstreams::new(
            args.upstream.config(),
        )),
        audit,
        args.config(),
    ));
    gw.spawn_invalidation(p.control.db().pool_for_health().clone());
    p.tools = std::sync::Arc::new(crate::gateway::runtime::InProcessGateway::new(gw.clone()));
    Ok(gw)
}

fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    match cmd {
        TokenCmd::Mint {
            project,
            agent,
            environment,
            run,
            mode,
            ttl_seconds,
            state_dir,
            gateway_key: key,
        } => {
            let keys = crate::gateway::keys::GatewayKeys::derive(&gateway_key(
                key.as_deref(),
                &state_dir,
                false,
            )?);
            let mode = mode.as_deref().map(MigrationMode::parse).transpose()?;
            let t = crate::gateway::tokens::mint_run_token(
                &keys.run_token,
                &crate::gateway::tokens::RunTokenClaims {
                    project,
                    agent,
                    run_id: run,
                    environment,
                    mode,
                    iat: now,
                    exp: now + ttl_seconds,
                },
            )?;
            println!("{t}");
            Ok(())
        }
        TokenCmd::Approve {
            project,
            tool,
            arguments,
            run,
            approver,
            ttl_seconds,
            state_dir,
            gateway_key: key,
        } => {
            use crate::gateway::approval;
            let keys = crate::gateway::keys::GatewayKeys::derive(&gateway_key(
                key.as_deref(),
                &state_dir,
                false,
            )?);
            let args: Value = http::extract::parse_json(arguments.as_bytes())?;
            if !args.is_object() {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "--arguments must be a JSON object",
                )
                .into());
            }
            if ttl_seconds <= 0 || ttl_seconds > approval::MAX_TTL_SECONDS {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "--ttl-seconds must be 1..=604800",
                )
                .into());
            }
            ProjectId::parse(&project)?;
            let hash = approval::arguments_hash(&args);
            let run = run.map(|r| r.to_string());
            let claims = approval::claims(
                approval::Expected {
                    project: &project,
                    run_id: run.as_deref(),
                    tool: &tool,
                    args_sha256: &hash,
                },
                &approver,
                now,
                ttl_seconds,
            );
            println!("{}", approval::mint(&keys.approval, &claims));
            Ok(())
        }
    }
}

/// `awooop mcp-fixture`: the upstream client's test server (stdio, or HTTP until SIGTERM).
async fn mcp_fixture(a: McpFixtureArgs) -> anyhow::Result<()> {
    use crate::gateway::upstream::fixture;
    if a.stdio {
        fixture::serve_stdio().await?;
        return Ok(());
    }
    let server = fixture::FixtureServer::bind(
        a.listen,
        fixture::FixtureOptions {
            sse: a.sse,
            ..Default::default()
        },
    )
    .await?;
    println!("PORT={}", server.addr.port());
    shutdown_signal().await;
    drop(server);
    Ok(())
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

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
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

fn read_json(file: &Path) -> anyhow::Result<Value> {
    let mut s = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        s = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(http::extract::parse_json(s.as_bytes())?)
}

fn uuid(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "id must be a UUID"))
}

async fn contract(cmd: ContractCmd) -> anyhow::Result<()> {
    match cmd {
        ContractCmd::Validate { kind, file } => {
            let kind = ContractKind::parse(&kind)?;
            let body = read_json(&file)?;
            match contracts::validate_and_hash(kind, &body) {
                Ok(v) => print(&serde_json::json!({"valid": true, "body_hash": v.body_hash})),
                Err(e) => Err(e.into()),
            }
        }
        ContractCmd::Draft {
            db,
            target,
            file,
            actor,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let body = read_json(&file)?;
            let v = tenancy::scope(
                ProjectId::parse(&target.project)?,
                p.control
                    .create_draft(&Actor::cli(&actor), kind, &target.name, body),
            )
            .await?;
            print(&v)
        }
        ContractCmd::Publish {
            db,
            keyring,
            project,
            draft,
            key_id,
            actor,
        } => {
            let p = Platform::connect(&db, None, Some(&keyring)).await?;
            let draft = uuid(&draft)?;
            let v = tenancy::scope(ProjectId::parse(&project)?, async {
                let req = p.control.sign_draft(draft, &key_id).await?;
                p.control.publish(&Actor::cli(&actor), draft, req).await
            })
            .await?;
            print(&v)
        }
        ContractCmd::Approve {
            db,
            redis,
            project,
            revision,
            actor,
        } => {
            let p = Platform::connect(&db, Some(&redis), None).await?;
            let v = tenancy::scope(
                ProjectId::parse(&project)?,
                p.control.approve(&Actor::cli(&actor), uuid(&revision)?),
            )
            .await?;
            print(&v)
        }
        ContractCmd::Activate {
            db,
            redis,
            project,
            revision,
            actor,
        } => {
            let p = Platform::connect(&db, Some(&redis), None).await?;
            let v = tenancy::scope(
                ProjectId::parse(&project)?,
                p.control.activate(&Actor::cli(&actor), uuid(&revision)?),
            )
            .await?;
            print(&v)
        }
        ContractCmd::Show {
            db,
            target,
            revision,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let project = ProjectId::parse(&target.project)?;
            match revision {
                Some(n) => print(
                    &tenancy::scope(project, p.control.revision(kind, &target.name, n)).await?,
                ),
                None => {
                    print(&tenancy::scope(project, p.control.active(kind, &target.name)).await?)
                }
            }
        }
        ContractCmd::Diff {
            db,
            target,
            from,
            to,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let d = tenancy::scope(
                ProjectId::parse(&target.project)?,
                p.control.diff(kind, &target.name, from, to),
            )
            .await?;
            print!("{d}");
            Ok(())
        }
        ContractCmd::History { db, target } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            print(
                &tenancy::scope(
                    ProjectId::parse(&target.project)?,
                    p.control.history(kind, &target.name),
                )
                .await?,
            )
        }
    }
}

/// Write the generated schemas, or check them against the committed files.
pub fn schemas(out: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for kind in ContractKind::ALL {
        let path = out.join(kind.schema_file());
        let text = format!("{}\n", serde_json::to_string_pretty(&kind.schema())?);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(out)?;
            std::fs::write(&path, text)?;
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated schemas differ from committed files (run `awooop schemas`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Write the CRD YAML files, or check them against the committed ones.
/// Writes (or checks) the same files into every folder given: `crds/` for `kubectl apply` and
/// the Helm chart's `charts/awooop/crds/`, so the two can never drift apart.
pub fn crdgen<P: AsRef<Path>>(outs: &[P], check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for out in outs {
        let out = out.as_ref();
        for (name, text) in crate::k8s::crd::crd_files() {
            let path = out.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else {
                std::fs::create_dir_all(out)?;
                std::fs::write(&path, text)?;
            }
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated CRDs differ from committed files (run `awooop crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}

/// `awooop up`: the whole platform locally.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut p = Platform::connect(&args.db, Some(&args.redis), Some(&args.keyring)).await?;
    let gateway = attach_gateway(&mut p, &args.gateway, true, None)?;
    let admin_token = match &args.admin_token {
        Some(t) => t.clone(),
        None => {
            let path = p.state_dir.join("admin-token");
            if path.exists() {
                std::fs::read_to_string(&path)?.trim().to_string()
            } else {
                let t = AdminToken::generate();
                write_private(&path, t.as_bytes())?;
                t
            }
        }
    };
    // A local signing key for the seeded project, so the whole lifecycle works out of the box.
    let keyring_file = keyring_path(Some(&args.keyring), &p.state_dir);
    let awoooi = ProjectId::parse("awoooi")?;
    let has_key: bool = tenancy::scope(awoooi.clone(), async {
        let mut tx = p.control.db().tenant().await?;
        let n: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE key_id = 'local')")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok::<_, Error>(n)
    })
    .await?;
    if !has_key && args.keyring.keyring.is_none() {
        create_signing_key(&p, &keyring_file, &awoooi, "local").await?;
    }
    let metrics = crate::metrics::Metrics::new();
    let state = http::AppState {
        control: p.control.clone(),
        admin: Some(AdminToken::new(&admin_token)),
        max_body_bytes: args.max_body_bytes,
        metrics: metrics.clone(),
    };
    eprintln!(
        "AwoooP is up\n  database: {}\n  redis:    {}\n  API:      http://{}\n  admin token: {} (file {})\n  keyring:  {}",
        p.source(),
        if p.control.coord().is_configured() {
            "configured"
        } else {
            "not configured (optional)"
        },
        args.listen,
        if args.admin_token.is_some() {
            "from AWOOOP_ADMIN_TOKEN"
        } else {
            "generated"
        },
        p.state_dir.join("admin-token").display(),
        keyring_file.display(),
    );
    let worker = worker_for(&p, &args.worker, metrics.clone());
    let (stop_tx, stop_rx) = crate::runtime::worker::shutdown_channel();
    let worker_task = tokio::spawn(worker.run(stop_rx.clone()));
    let stop_rx_channels = stop_rx.clone();
    // Without a cluster the projection goes to files (the operator's file sink).
    let has_kubeconfig = std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("HOME")
            .is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists());
    let manifests = p.state_dir.join("manifests");
    if !has_kubeconfig {
        tokio::spawn(crate::k8s::sink::run_file_sink(
            p.control.clone(),
            p.control.db().pool_for_health().clone(),
            manifests.clone(),
            "awooop".into(),
            std::time::Duration::from_secs(60),
            stop_rx,
        ));
        eprintln!(
            "  manifests: {} (no kubeconfig: file sink)",
            manifests.display()
        );
    }
    let mcp =
        http::mcp::McpState::new(gateway.clone(), p.control.db().clone(), args.max_body_bytes)
            .with_allowed_origins(args.gateway.gateway_allowed_origins.clone());
    eprintln!(
        "  MCP gateway: http://{}/mcp (bearer: `awooop token mint --project P --agent A`; key file {})",
        args.listen,
        p.state_dir.join("gateway-key").display()
    );
    let hub = channel_hub(&p, &args.channels, &metrics);
    let delivery = tokio::spawn(
        crate::channels::delivery::DeliveryWorker::new(hub.clone(), Default::default())
            .run(stop_rx_channels),
    );
    eprintln!(
        "  channel webhooks: http://{}/v1/webhooks/<project>/<channel>",
        args.listen
    );
    let router = http::app(state)
        .merge(http::mcp::router(mcp))
        .merge(crate::channels::routes(hub));
    http::serve(args.listen, router, shutdown_signal()).await?;
    // The API has stopped taking requests; let the worker finish or release its runs.
    let _ = stop_tx.send(true);
    let _ = worker_task.await;
    let _ = delivery.await;
    // Every queued call-audit row is written before exit.
    gateway.audit().flush().await;
    drop(p);
    Ok(())
}

/// `awooop serve`: the HTTP API alone, against an external PostgreSQL, with no worker (the
/// operator runs workers as Deployments) and no file sink.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut p = Platform::connect(&args.db, Some(&args.redis), Some(&args.keyring)).await?;
    let secrets = kube_secrets(&args.secrets_namespace()).await;
    let in_cluster = secrets.is_some();
    let gateway = attach_gateway(&mut p, &args.gateway, false, secrets)?;
    let admin_token = args
        .admin_token
        .clone()
        .expect("validate() requires an admin token");
    let state = http::AppState {
        control: p.control.clone(),
        admin: Some(AdminToken::new(&admin_token)),
        max_body_bytes: args.max_body_bytes,
        metrics: crate::metrics::Metrics::new(),
    };
    eprintln!(
        "AwoooP API and MCP gateway serving on http://{} (database: {}, redis: {}, Kubernetes Secrets: {})",
        args.listen,
        p.source(),
        if p.control.coord().is_configured() {
            "configured"
        } else {
            "not configured (optional)"
        },
        if in_cluster {
            "watched"
        } else {
            "no Kubernetes API"
        },
    );
    let mcp =
        http::mcp::McpState::new(gateway.clone(), p.control.db().clone(), args.max_body_bytes)
            .with_allowed_origins(args.gateway.gateway_allowed_origins.clone());
    let hub = channel_hub(&p, &args.channels, &state.metrics);
    let router = http::app(state)
        .merge(http::mcp::router(mcp))
        .merge(crate::channels::routes(hub));
    http::serve(args.listen, router, shutdown_signal()).await?;
    // Every queued call-audit row is written before exit.
    gateway.audit().flush().await;
    drop(p);
    Ok(())
}

/// The watched Secret cache when a Kubernetes API is reachable (in-cluster config or a
/// kubeconfig), else `None`: `kubernetes_secret` refs then fail closed with E-MCP-005.
async fn kube_secrets(
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

fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}

/// A worker executing scripted and LLM agents; tool calls go through the guarded boundary and
/// then `p.tools` (the MCP gateway after [`attach_gateway`], else every call fails with
/// E-RUN-013); model calls go through the ProviderProxy with local (env/file) credential refs.
pub fn worker_for(
    p: &Platform,
    args: &WorkerArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> std::sync::Arc<crate::runtime::worker::Worker> {
    worker_for_project(p, args, metrics, None)
}

/// [`worker_for`], claiming only `project`'s runs when given (`awooop worker --project P`).
pub fn worker_for_project(
    p: &Platform,
    args: &WorkerArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    project: Option<String>,
) -> std::sync::Arc<crate::runtime::worker::Worker> {
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
        Ok(proxy) => Some(LlmExecutor::new(
            p.control.clone(),
            GuardedGateway::new(p.control.clone(), tools),
            std::sync::Arc::new(proxy),
            anomalies,
        )),
        Err(e) => {
            tracing::error!(
                code = e.code.as_str(),
                "model proxy unavailable; LLM agents fail"
            );
            None
        }
    };
    let executor = std::sync::Arc::new(AgentExecutor::new(scripted, llm));
    std::sync::Arc::new(
        crate::runtime::worker::Worker::new(
            p.control.db().pool_for_health().clone(),
            p.control.clone(),
            executor,
            {
                let mut cfg = args.config(worker_id());
                cfg.project = project;
                cfg
            },
        )
        .with_metrics(metrics),
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

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

/// Build the channel hub of this process and add its metrics to `/metrics`.
pub fn channel_hub(
    p: &Platform,
    args: &crate::config::ChannelArgs,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> crate::channels::Hub {
    let hub = crate::channels::Hub::new(
        p.control.clone(),
        std::sync::Arc::new(HubSecrets(p.model_credentials.clone())),
        args.hub_config(),
    );
    let m = hub.metrics().clone();
    metrics.add_encoder(move |out| m.encode(out));
    hub
}

async fn channel_cmd(cmd: crate::config::ChannelCmd) -> anyhow::Result<()> {
    use crate::channels::providers::{self, SendOutcome};
    use crate::config::ChannelCmd;
    match cmd {
        ChannelCmd::Register {
            db,
            project,
            channel,
            public_url,
            channels,
            gateway,
        } => {
            channels.validate()?;
            let public_url = public_url.trim_end_matches('/').to_string();
            if !public_url.starts_with("https://") {
                anyhow::bail!(
                    "--public-url must be an https:// URL (providers only call HTTPS webhooks)"
                );
            }
            let mut p = Platform::connect(&db, None, None).await?;
            let _gw = attach_gateway(&mut p, &gateway, false, None)?;
            let pid = ProjectId::parse(&project)?;
            let hub = channel_hub(&p, &channels, &crate::metrics::Metrics::new());
            let webhook = format!("{public_url}/v1/webhooks/{project}/{channel}");
            let out = tenancy::scope(pid.clone(), async {
                let raw = hub.channel_contract(&channel).await?;
                let mut generated = false;
                if raw.provider == crate::contracts::ChannelProvider::Telegram
                    && hub.channel(&pid, &channel).await.is_err_and(|e| e.code == crate::error::ErrorCode::ChannelCredential)
                {
                    // No secret token yet: generate one and store it where the channel's
                    // verify_secret file ref points (it must lie in the project's credential
                    // folder, or it will not resolve).
                    let Some(crate::contracts::CredentialSource::File { path }) = &raw.verify_secret else {
                        anyhow::bail!(
                            "the channel's verify_secret does not resolve; make it a file ref under AWOOOP_GATEWAY_CREDENTIAL_DIR/{project}/ and register writes a generated secret token there, or store one yourself"
                        );
                    };
                    let token = hex::encode(rand::random::<[u8; 32]>());
                    write_private(std::path::Path::new(path.as_str()), token.as_bytes())?;
                    hub.invalidate();
                    generated = true;
                }
                let ch = hub.channel(&pid, &channel).await?;
                let provider = ch.provider();
                Ok::<_, anyhow::Error>(match provider {
                    crate::contracts::ChannelProvider::Telegram => {
                        let token = hub.send_credential(&pid, &ch).await?;
                        let secret = ch
                            .verify_secret
                            .clone()
                            .map(|s| s.expose().to_string())
                            .unwrap_or_default();
                        let timed = providers::telegram_set_webhook(
                            hub.http(),
                            &hub.config().urls,
                            &token,
                            &webhook,
                            &secret,
                        )
                        .await;
                        match timed.outcome {
                            SendOutcome::Sent { .. } => serde_json::json!({
                                "provider": "telegram", "webhook": webhook, "set_webhook": "ok",
                                "secret_token": if generated { "generated into the channel's verify_secret file (not printed)" } else { "the channel's verify_secret (not printed)" }
                            }),
                            other => anyhow::bail!("Telegram setWebhook failed: {other:?}"),
                        }
                    }
                    crate::contracts::ChannelProvider::Line => serde_json::json!({
                        "provider": "line", "webhook": webhook,
                        "configure": "LINE Developers console → Messaging API → Webhook URL = webhook, Use webhook = on; verify_secret = the channel secret, send_credential = a channel access token"
                    }),
                    crate::contracts::ChannelProvider::Slack => serde_json::json!({
                        "provider": "slack", "webhook": webhook,
                        "configure": "Slack app → Event Subscriptions Request URL = webhook (answers url_verification), Interactivity Request URL = webhook; verify_secret = the signing secret, send_credential = the bot token (xoxb-)"
                    }),
                    _ => serde_json::json!({
                        "provider": "api",
                        "events": format!("{public_url}/v1/platform/conversations/{channel}/events (Bearer project API key)")
                    }),
                })
            })
            .await?;
            print(&out)
        }
        ChannelCmd::Test {
            db,
            project,
            channel,
            conversation,
            text,
            channels,
            gateway,
        } => {
            channels.validate()?;
            let mut p = Platform::connect(&db, None, None).await?;
            let _gw = attach_gateway(&mut p, &gateway, false, None)?;
            let pid = ProjectId::parse(&project)?;
            let hub = channel_hub(&p, &channels, &crate::metrics::Metrics::new());
            let out = tenancy::scope(pid.clone(), async {
                let ch = hub.channel(&pid, &channel).await?;
                let token = hub.send_credential(&pid, &ch).await?;
                let parts = crate::channels::format::parts(ch.provider(), &text);
                let first = parts.into_iter().next().unwrap_or_default();
                let timed = providers::send(
                    hub.http(),
                    &hub.config().urls,
                    ch.provider(),
                    &token,
                    &conversation,
                    &first,
                    uuid::Uuid::now_v7(),
                    None,
                )
                .await;
                Ok::<_, anyhow::Error>(match timed.outcome {
                    SendOutcome::Sent {
                        provider_id,
                        status,
                    } => serde_json::json!({
                        "sent": true, "status": status, "provider_message_id": provider_id,
                        "latency_ms": timed.latency.as_millis() as u64
                    }),
                    other => anyhow::bail!("test message not delivered: {other:?}"),
                })
            })
            .await?;
            print(&out)
        }
    }
}
