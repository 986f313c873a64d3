//! Step 1, **fetch**: what a reconcile needs to know, read from PostgreSQL (the project's state
//! and active revisions, its queue depth) and from the cluster (its projected objects and the
//! Secrets labelled for it): by LIST ([`fetch_cluster`]) or from the watched caches
//! ([`super::cache::Caches::slice`]), which give the same [`Cluster`].
//!
//! Secret values are read only to learn which keys exist and are dropped at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta};

use super::error::{ReconcileError, kube_err};
use super::{Context, MANAGED_SELECTOR, PROJECT_LABEL};
use crate::crd::{AgentProject, McpGrant};
use crate::project::Revision;
use awooop_contracts::{Contract, ContractKind, McpGatewayContract, ProjectContract};
use awooop_control::ControlPlane;
use awooop_core::error::ErrorCode;
use awooop_store::tenancy::{self, ProjectId};

/// A project as PostgreSQL has it; `None` from [`fetch_db`] means retired or unknown.
#[derive(Debug, Clone, PartialEq)]
pub struct DbProject {
    pub id: ProjectId,
    pub mode: String,
    pub project_rev: Option<Revision<ProjectContract>>,
    pub gateway_rev: Option<Revision<McpGatewayContract>>,
    pub queue_depth: i64,
}

pub(crate) fn db_err(
    project: &ProjectId,
) -> impl FnOnce(awooop_core::error::Error) -> ReconcileError {
    let project = project.to_string();
    move |source| ReconcileError::Database {
        project,
        code: source.code.as_str(),
        source,
    }
}

async fn active(
    control: &ControlPlane,
    id: &ProjectId,
    kind: ContractKind,
    name: &str,
) -> Result<Option<(awooop_control::repo::ActiveRow, Contract)>, ReconcileError> {
    match control.active_typed(kind, name).await {
        Ok(x) => Ok(Some(x)),
        Err(e) if e.code == ErrorCode::ContractNotFound => Ok(None),
        Err(e)
            if matches!(
                e.code,
                ErrorCode::SchemaViolation | ErrorCode::ContractSemantic
            ) =>
        {
            Err(ReconcileError::InvalidRevision {
                project: id.to_string(),
                kind: kind.as_str(),
                code: e.code.as_str(),
            })
        }
        Err(e) => Err(db_err(id)(e)),
    }
}

/// Read one project's state (active revisions, mode, queue depth) from PostgreSQL.
pub async fn fetch_db(
    control: &ControlPlane,
    id: &ProjectId,
    queue_depth: Option<i64>,
) -> Result<Option<DbProject>, ReconcileError> {
    tenancy::scope(id.clone(), async {
        let view = match control.project().await {
            Ok(v) => v,
            Err(e) if e.code == ErrorCode::ProjectNotFound => return Ok(None),
            Err(e) => return Err(db_err(id)(e)),
        };
        if view.project.status != "active" {
            return Ok(None);
        }
        let project_rev = match active(control, id, ContractKind::Project, id.as_str()).await? {
            Some((ptr, Contract::Project(body))) => Some(Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            }),
            _ => None,
        };
        let gateway_rev = match active(control, id, ContractKind::McpGateway, "default").await? {
            Some((ptr, Contract::McpGateway(body))) => Some(Revision {
                revision_id: ptr.revision_id.to_string(),
                revision: ptr.revision,
                body_hash: ptr.body_hash,
                body,
            }),
            _ => None,
        };
        let queue_depth = match queue_depth {
            Some(n) => n,
            None => queue_depths(control, Some(id))
                .await?
                .remove(id.as_str())
                .unwrap_or(0),
        };
        Ok(Some(DbProject {
            id: id.clone(),
            mode: view.mode,
            project_rev,
            gateway_rev,
            queue_depth,
        }))
    })
    .await
}

/// Every active project's state, read in one query in operator scope (migration 0067), for a
/// full resync: the same [`DbProject`] that [`fetch_db`] reads per project in three tenant
/// transactions, which made a resync of N projects cost 3N round trips. A project missing
/// from the map is retired or unknown, as `None` from [`fetch_db`]. A revision that no longer
/// validates fails its own project only (the `Err` entry), as it does in [`fetch_db`].
pub async fn fetch_all_db(
    control: &ControlPlane,
    depths: &HashMap<String, i64>,
) -> Result<BTreeMap<String, Result<DbProject, ReconcileError>>, ReconcileError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        project_id: String,
        mode: Option<String>,
        p_revision_id: Option<sqlx::types::Uuid>,
        p_revision: Option<i32>,
        p_body_hash: Option<String>,
        p_body: Option<serde_json::Value>,
        g_revision_id: Option<sqlx::types::Uuid>,
        g_revision: Option<i32>,
        g_body_hash: Option<String>,
        g_body: Option<serde_json::Value>,
    }
    let platform = ProjectId::parse("platform").expect("valid id");
    let pool = control.db().pool_for_health();
    let rows: Vec<Row> = async {
        let mut tx = tenancy::operator_tx(pool).await?;
        // The pointer's revision and hash equal the revision row's (composite foreign key);
        // the body comes from the revision row, as in the per-project read (repo::active_body).
        let rows = sqlx::query_as(
            "SELECT p.project_id, m.mode, \
               pa.revision_id AS p_revision_id, pa.revision AS p_revision, \
               pa.body_hash AS p_body_hash, pr.body AS p_body, \
               ga.revision_id AS g_revision_id, ga.revision AS g_revision, \
               ga.body_hash AS g_body_hash, gr.body AS g_body \
             FROM projects p \
             LEFT JOIN project_migration_state m ON m.project_id = p.project_id \
             LEFT JOIN active_revisions pa ON pa.project_id = p.project_id \
               AND pa.kind = 'project' AND pa.name = p.project_id \
             LEFT JOIN contract_revisions pr ON pr.project_id = pa.project_id \
               AND pr.revision_id = pa.revision_id \
             LEFT JOIN active_revisions ga ON ga.project_id = p.project_id \
               AND ga.kind = 'mcp_gateway' AND ga.name = 'default' \
             LEFT JOIN contract_revisions gr ON gr.project_id = ga.project_id \
               AND gr.revision_id = ga.revision_id \
             WHERE p.status = 'active' ORDER BY p.project_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, awooop_core::error::Error>(rows)
    }
    .await
    .map_err(db_err(&platform))?;

    let mut out = BTreeMap::new();
    for r in rows {
        let Ok(id) = ProjectId::parse(&r.project_id) else {
            continue;
        };
        let project_rev = typed(
            ContractKind::Project,
            r.p_revision_id,
            r.p_revision,
            r.p_body_hash,
            r.p_body,
        );
        let gateway_rev = typed(
            ContractKind::McpGateway,
            r.g_revision_id,
            r.g_revision,
            r.g_body_hash,
            r.g_body,
        );
        // The per-project path checks the Project revision first, then the gateway's.
        let project = match (project_rev, gateway_rev) {
            (Err(v), _) => Err(invalid(&id, ContractKind::Project, v)),
            (_, Err(v)) => Err(invalid(&id, ContractKind::McpGateway, v)),
            (Ok(p), Ok(g)) => Ok(DbProject {
                id: id.clone(),
                // A project without a recorded mode is shadow, the safest (ControlPlane::project).
                mode: r.mode.unwrap_or_else(|| "shadow".into()),
                project_rev: p.and_then(|(revision_id, revision, body_hash, c)| match c {
                    Contract::Project(body) => Some(Revision {
                        revision_id,
                        revision,
                        body_hash,
                        body,
                    }),
                    _ => None,
                }),
                gateway_rev: g.and_then(|(revision_id, revision, body_hash, c)| match c {
                    Contract::McpGateway(body) => Some(Revision {
                        revision_id,
                        revision,
                        body_hash,
                        body,
                    }),
                    _ => None,
                }),
                queue_depth: depths.get(id.as_str()).copied().unwrap_or(0),
            }),
        };
        out.insert(id.to_string(), project);
    }
    Ok(out)
}

type Typed = (String, i32, String, Contract);

/// Parse one active revision read by [`fetch_all_db`] (`None`: no active revision).
fn typed(
    kind: ContractKind,
    revision_id: Option<sqlx::types::Uuid>,
    revision: Option<i32>,
    body_hash: Option<String>,
    body: Option<serde_json::Value>,
) -> Result<Option<Typed>, Vec<awooop_contracts::Violation>> {
    let (Some(revision_id), Some(revision), Some(body_hash), Some(body)) =
        (revision_id, revision, body_hash, body)
    else {
        return Ok(None);
    };
    let c = awooop_contracts::validate(kind, &body)?;
    Ok(Some((revision_id.to_string(), revision, body_hash, c)))
}

/// A published revision that no longer validates, mapped as [`active`] maps it.
fn invalid(
    id: &ProjectId,
    kind: ContractKind,
    violations: Vec<awooop_contracts::Violation>,
) -> ReconcileError {
    let e = awooop_contracts::violations_error(violations);
    if matches!(
        e.code,
        ErrorCode::SchemaViolation | ErrorCode::ContractSemantic
    ) {
        ReconcileError::InvalidRevision {
            project: id.to_string(),
            kind: kind.as_str(),
            code: e.code.as_str(),
        }
    } else {
        db_err(id)(e)
    }
}

/// Runnable runs per project (one project, or all), read in the worker scope that sees every
/// project's queue (as the metrics endpoint does).
pub async fn queue_depths(
    control: &ControlPlane,
    only: Option<&ProjectId>,
) -> Result<HashMap<String, i64>, ReconcileError> {
    let pool = control.db().pool_for_health();
    let run = async {
        let mut tx = awooop_runtime::repo::worker_tx(pool).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT project_id, count(*) FROM runs WHERE state IN ('queued', 'retrying') \
             AND ($1::text IS NULL OR project_id = $1) GROUP BY project_id",
        )
        .bind(only.map(|p| p.as_str()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, awooop_core::error::Error>(rows.into_iter().collect())
    };
    let platform = ProjectId::parse("platform").expect("valid id");
    run.await.map_err(db_err(only.unwrap_or(&platform)))
}

/// Which keys a labelled Secret has (never its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub project: Option<String>,
    pub keys: BTreeSet<String>,
}

impl SecretInfo {
    /// Keep the key names, drop the values.
    pub fn of(s: &Secret) -> Self {
        let mut keys: BTreeSet<String> = s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
        keys.extend(s.string_data.iter().flatten().map(|(k, _)| k.clone()));
        Self {
            project: s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PROJECT_LABEL).cloned()),
            keys,
        }
    }
}

/// The projected objects and labelled Secrets in the cluster.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub projects: Vec<AgentProject>,
    pub grants: Vec<McpGrant>,
    pub deployments: Vec<Deployment>,
    pub secrets: BTreeMap<String, SecretInfo>,
    /// Read from the watched caches, which may lag our own last write by one watch event:
    /// the apply step then confirms drift with a GET before restoring (and reporting) it.
    pub from_cache: bool,
}

pub fn project_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(PROJECT_LABEL))
        .map(String::as_str)
}

impl Cluster {
    /// Split a whole-namespace snapshot by project, in one pass (a per-project filter over
    /// the whole snapshot would make a resync quadratic in the number of projects).
    pub fn partition(&self) -> BTreeMap<String, Cluster> {
        let mut out: BTreeMap<String, Cluster> = BTreeMap::new();
        let slice = || Cluster {
            from_cache: self.from_cache,
            ..Default::default()
        };
        for o in &self.projects {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string())
                    .or_insert_with(slice)
                    .projects
                    .push(o.clone());
            }
        }
        for o in &self.grants {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string())
                    .or_insert_with(slice)
                    .grants
                    .push(o.clone());
            }
        }
        for o in &self.deployments {
            if let Some(p) = project_of(&o.metadata) {
                out.entry(p.to_string())
                    .or_insert_with(slice)
                    .deployments
                    .push(o.clone());
            }
        }
        for (name, s) in &self.secrets {
            if let Some(p) = &s.project {
                out.entry(p.clone())
                    .or_insert_with(slice)
                    .secrets
                    .insert(name.clone(), s.clone());
            }
        }
        out
    }

    /// Every project that has objects here.
    pub fn project_ids(&self) -> BTreeSet<String> {
        self.projects
            .iter()
            .map(|o| &o.metadata)
            .chain(self.grants.iter().map(|o| &o.metadata))
            .chain(self.deployments.iter().map(|o| &o.metadata))
            .filter_map(project_of)
            .map(str::to_string)
            .collect()
    }
}

/// LIST the projected objects (of one project, or all) and the labelled Secrets: four requests.
pub async fn fetch_cluster(
    ctx: &Context,
    project: Option<&str>,
) -> Result<Cluster, ReconcileError> {
    let (managed, secrets_sel) = match project {
        Some(p) => (
            format!("{PROJECT_LABEL}={p},{MANAGED_SELECTOR}"),
            format!("{PROJECT_LABEL}={p}"),
        ),
        None => (MANAGED_SELECTOR.to_string(), PROJECT_LABEL.to_string()),
    };
    let lp = ListParams::default().labels(&managed);
    let ns = &ctx.namespace;
    let projects = Api::<AgentProject>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "AgentProject", "*"))?
        .items;
    let grants = Api::<McpGrant>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "McpGrant", "*"))?
        .items;
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list", "Deployment", "*"))?
        .items;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&secrets_sel))
        .await
        .map_err(kube_err("list", "Secret", "*"))?
        .items
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                SecretInfo::of(s),
            )
        })
        .collect();
    Ok(Cluster {
        projects,
        grants,
        deployments,
        secrets,
        from_cache: false,
    })
}
