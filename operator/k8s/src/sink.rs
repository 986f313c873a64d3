//! The file sink: the same objects the controller applies, written as YAML into a folder (for
//! GitOps repositories, and for machines without a cluster). Files of projects and grants that
//! are no longer active are removed, so the folder mirrors PostgreSQL.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;

use super::project::{Revision, agent_project, mcp_grants};
use awooop_contracts::{Contract, ContractKind};
use awooop_control::ControlPlane;
use awooop_core::error::{ErrorCode, Result};
use awooop_store::auth::Actor;
use awooop_store::tenancy::{self, ProjectId};

/// What one export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub projects: usize,
    pub grants: usize,
    pub removed: usize,
}

/// Export every active project's projection into `dir/<project>/`.
pub async fn export(
    control: &ControlPlane,
    dir: &Path,
    namespace: &str,
) -> anyhow::Result<Written> {
    let mut out = Written::default();
    std::fs::create_dir_all(dir)?;
    let projects = control
        .list_projects(&Actor::cli("awooop-operator"))
        .await?;
    let mut live_dirs = BTreeSet::new();
    for p in projects
        .into_iter()
        .filter(|p| p.project.status == "active")
    {
        let id = ProjectId::parse(&p.project.project_id)?;
        let files = tenancy::scope(
            id.clone(),
            project_files(control, id.as_str(), &p.mode, namespace),
        )
        .await?;
        if files.is_empty() {
            continue;
        }
        let pdir = dir.join(id.as_str());
        std::fs::create_dir_all(&pdir)?;
        live_dirs.insert(id.as_str().to_string());
        let mut keep = BTreeSet::new();
        for (name, text) in files {
            if name.starts_with("mcpgrant-") {
                out.grants += 1;
            } else {
                out.projects += 1;
            }
            write_if_changed(&pdir.join(&name), &text)?;
            keep.insert(name);
        }
        out.removed += remove_stale(&pdir, &keep)?;
    }
    // Whole projects that are gone (retired, or no active Project revision any more).
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_dir() && !live_dirs.contains(&name) && is_ours(&e.path()) {
            out.removed += remove_stale(&e.path(), &BTreeSet::new())?;
            let _ = std::fs::remove_dir(e.path());
        }
    }
    Ok(out)
}

const HEADER: &str =
    "# Projected by awooop-operator from PostgreSQL. Do not edit: changes are overwritten.\n";

async fn project_files(
    control: &ControlPlane,
    project: &str,
    mode: &str,
    ns: &str,
) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    match control.active_typed(ContractKind::Project, project).await {
        Ok((ptr, Contract::Project(body))) => {
            let rev = Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            };
            files.push((
                "agentproject.yaml".to_string(),
                yaml(&agent_project(ns, project, mode, &rev)),
            ));
        }
        Ok(_) => {}
        // A project without an active Project revision has nothing to project yet.
        Err(e) if e.code == ErrorCode::ContractNotFound => return Ok(files),
        Err(e) => return Err(e),
    }
    match control
        .active_typed(ContractKind::McpGateway, "default")
        .await
    {
        Ok((ptr, Contract::McpGateway(body))) => {
            let rev = Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            };
            for g in mcp_grants(ns, project, &rev) {
                files.push((format!("mcpgrant-{}.yaml", g.spec.agent), yaml(&g)));
            }
        }
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::ContractNotFound => {}
        Err(e) => return Err(e),
    }
    Ok(files)
}

fn yaml<T: serde::Serialize>(v: &T) -> String {
    // Kubernetes objects carry apiVersion/kind from the typed object.
    let value = serde_json::to_value(v).unwrap_or(json!({}));
    format!(
        "{HEADER}{}",
        serde_saphyr::to_string(&value).expect("objects serialise to YAML")
    )
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn is_ours(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| {
        d.all(|e| {
            e.is_ok_and(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with(HEADER)))
        })
    })
}

/// Remove our YAML files in `dir` that are not in `keep`; files we did not write are left.
fn remove_stale(dir: &Path, keep: &BTreeSet<String>) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml")
            && !keep.contains(&name)
            && std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with(HEADER))
        {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Keep `dir` in step with PostgreSQL: export at start, on every activation (LISTEN
/// `awooop_activation`) and on a periodic resync, so a missed notification only delays.
pub async fn run_file_sink(
    control: ControlPlane,
    pool: sqlx::PgPool,
    dir: std::path::PathBuf,
    namespace: String,
    resync: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.ok();
    if let Some(l) = listener.as_mut()
        && l.listen(awooop_control::ACTIVATION_CHANNEL).await.is_err()
    {
        listener = None;
    }
    loop {
        match export(&control, &dir, &namespace).await {
            Ok(w) if w.projects + w.grants + w.removed > 0 => {
                tracing::debug!(
                    projects = w.projects,
                    grants = w.grants,
                    removed = w.removed,
                    "projected manifests"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "projection to files failed; retrying at the next resync")
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => {
                    let _ = l.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = notified => {},
            _ = tokio::time::sleep(resync) => {},
            _ = shutdown.changed() => return,
        }
    }
}
