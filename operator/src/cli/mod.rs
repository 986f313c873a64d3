//! The `awooop` subcommands. Each command is a thin shell over the same service the HTTP API
//! uses; output is JSON on stdout, errors are JSON `{code, message, details}` on stderr.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::{Actor, AdminToken, Role};
use crate::config::*;
use crate::contracts::{self, ContractKind};
use crate::control::{MigrationMode, NewProject};
use crate::error::{Error, ErrorCode};
use crate::local;
use crate::tenancy::{self, ProjectId};
use crate::{db, http};

mod apply;
mod approval;
mod channel;
mod contract;
#[cfg(feature = "bench")]
mod fixture;
mod generate;
mod output;
mod policy;
mod run;
mod serve;
mod token;
mod up;

pub(crate) use crate::platform::*;
use contract::contract;
#[cfg(feature = "bench")]
use fixture::mcp_fixture;
pub use generate::{crdgen, schemas};
use serve::serve;
use token::token;
use up::up;

/// Run a command; service errors are printed as JSON and turned into exit code 2.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let res = dispatch(cli.command).await;
    match res {
        Ok(()) => Ok(0),
        Err(e) if e.downcast_ref::<run::Exit>().is_some() => {
            Ok(e.downcast_ref::<run::Exit>().map_or(1, |x| x.0))
        }
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
            let bound = args.project.as_deref().map(ProjectId::parse).transpose()?;
            let project = bound.as_ref().map(ProjectId::to_string);
            let mut p = Platform::connect(&args.db, Some(&args.redis), None).await?;
            // In a worker pod the operator mounts exactly this project's resolved Secret keys.
            let secrets = match (&args.credentials_dir, &project) {
                (Some(dir), Some(project)) => Some(std::sync::Arc::new(
                    crate::k8s::secrets::MountedSecrets::new(dir, project),
                )
                    as std::sync::Arc<dyn crate::gateway::credentials::SecretLookup>),
                _ => None,
            };
            let gw = attach_gateway(&mut p, &args.gateway, false, secrets)?;
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
            // A project's worker pod delivers that project's messages only: it holds no other
            // project's send credentials (channels::delivery).
            let delivery = tokio::spawn(
                crate::channels::delivery::DeliveryWorker::for_project(
                    hub,
                    Default::default(),
                    bound,
                )
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
            output,
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
            output::emit_one(&output, &v, |v| v.project.project_id.clone())
        }
        Command::Project(ProjectCmd::Onboard {
            db,
            keyring,
            redis,
            from,
            project,
            approve,
            output,
        }) => {
            apply::onboard(
                db,
                keyring,
                redis,
                &from,
                project.as_deref(),
                &approve,
                &output,
            )
            .await
        }
        Command::Apply(args) => apply::apply(args).await,
        Command::Run(c) => run::run_cmd(c).await,
        Command::Audit(c) => run::audit_cmd(c).await,
        Command::Project(ProjectCmd::List { db }) => {
            let p = Platform::connect(&db, None, None).await?;
            print(&p.control.list_projects(&Actor::cli("cli")).await?)
        }
        Command::Apikey(ApikeyCmd::Create {
            db,
            project,
            principal,
            roles,
            agents,
            environments,
            output,
        }) => {
            let p = Platform::connect(&db, None, None).await?;
            let roles = roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            let project = ProjectId::parse(&project)?;
            let key = p
                .control
                .create_api_key_bound(
                    &Actor::cli("cli"),
                    &project,
                    &principal,
                    roles,
                    (!agents.is_empty() || !environments.is_empty()).then_some(
                        crate::auth::KeyBinding {
                            agents,
                            environments,
                        },
                    ),
                )
                .await?;
            output::emit_one(&output, &key, |k| k.token.clone())
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
            output,
        }) => {
            let p = Platform::connect(&db, None, Some(&keyring)).await?;
            let path = keyring_path(Some(&keyring), &p.state_dir);
            let v = create_signing_key(&p, &path, &ProjectId::parse(&project)?, &key_id).await?;
            output::emit_one(&output, &v, |v| {
                v["key_id"].as_str().unwrap_or("").to_string()
            })
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
        Command::Budget(BudgetCmd::Show { db, project }) => {
            let p = Platform::connect(&db, None, None).await?;
            let db = p.control.db().clone();
            print(
                &tenancy::scope(
                    ProjectId::parse(&project)?,
                    crate::http::views::budgets_in_scope(db),
                )
                .await?,
            )
        }
        Command::Schemas(a) => schemas(&a.out, a.check),
        Command::Crdgen(a) => crdgen(&[a.out, a.chart_out], a.check),
        Command::Operator(a) => {
            a.validate()?;
            let p = Platform::connect(&a.db, None, None).await?;
            let Some(out) = &a.out else {
                return crate::in_cluster::run_in_cluster(p.control.clone(), &a).await;
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
        Command::Channel(c) => channel::channel_cmd(c).await,
        Command::Approval(c) => approval::approval(c).await,
        Command::Catalog(c) => policy::catalog(c).await,
        Command::Egress(c) => policy::egress(c).await,
        Command::Errors => {
            print!("{}", crate::error::markdown_table());
            Ok(())
        }
        #[cfg(feature = "bench")]
        Command::Bench(b) => crate::bench::run(b).await,
        Command::Token(t) => token(t).await,
        #[cfg(feature = "bench")]
        Command::McpFixture(a) => mcp_fixture(a).await,
        Command::MarketMcp => {
            // Blocking stdio loop: off the async workers.
            tokio::task::spawn_blocking(|| {
                awooop_market_mcp::serve(std::io::stdin().lock(), std::io::stdout().lock())
            })
            .await?;
            Ok(())
        }
    }
}

/// Shared with `in_cluster` (the operator process); lives in the core crate.
pub use awooop_core::shutdown::shutdown_signal;
