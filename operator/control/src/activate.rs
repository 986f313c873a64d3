//! Activation as named steps, each one function over the open tenant transaction:
//!
//! 1. [`lock`]: the project is active, the revision is published, the contract name is locked
//!    (advisory lock per project/kind/name) and not already pointing at this revision;
//! 2. [`check_approvals`]: expired approvals voided, enough open ones left;
//! 3. [`write`]: approvals consumed, the active pointer swapped, the history row written, and
//!    an activated Project contract's approval policy applied to the project;
//! 4. [`materialise_gateway`]: an MCP Gateway contract's registry tables rewritten;
//! 5. [`audit`]: the `revision.activate` / `revision.rollback` row;
//! 6. [`notify`]: `pg_notify` on [`crate::ACTIVATION_CHANNEL`], delivered on commit;
//!
//! and after the commit [`forget_approvals`] drops the Redis duplicate-approval keys.
//! [`crate::ControlPlane::activate`] is the driver; all of 1–6 commit together or not at all.

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repo::{self, ActiveRow, ProjectRow, RevisionRow};
use crate::{ACTIVATION_CHANNEL, Activation, ControlPlane};
use awooop_contracts::{self as contracts, Contract, ContractKind};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::auth::Actor;
use awooop_store::coord::Coord;
use awooop_store::tenancy::{self, ProjectId};

/// What the steps after [`lock`] work on.
pub(crate) struct Target {
    pub project: ProjectId,
    pub policy: ProjectRow,
    pub rev: RevisionRow,
    pub kind: ContractKind,
    /// The pointer before this activation.
    pub current: Option<ActiveRow>,
}

/// Step 1: find and lock what is being activated.
pub(crate) async fn lock(
    cp: &ControlPlane,
    tx: &mut PgConnection,
    project: ProjectId,
    revision_id: Uuid,
) -> Result<Target> {
    let policy = cp.require_active_project(tx).await?;
    let rev = cp.published_revision(tx, revision_id).await?;
    let kind = ContractKind::parse(&rev.kind)?;
    repo::lock_contract(tx, kind, &rev.name).await?;
    let current = repo::active(tx, kind, &rev.name).await?;
    if current
        .as_ref()
        .is_some_and(|c| c.revision_id == revision_id)
    {
        return Err(Error::new(
            ErrorCode::ContractAlreadyActive,
            "this revision is already active",
        ));
    }
    Ok(Target {
        project,
        policy,
        rev,
        kind,
        current,
    })
}

/// Step 2: the open approvals, at least the project's required number.
pub(crate) async fn check_approvals(tx: &mut PgConnection, t: &Target) -> Result<Vec<String>> {
    let revision_id = t.rev.revision_id;
    repo::void_expired_approvals(tx, revision_id).await?;
    let approvers = repo::open_approvers(tx, revision_id).await?;
    let required = t.policy.required_approvals as usize;
    if approvers.len() < required {
        return Err(Error::new(
            ErrorCode::ContractInsufficientApprovals,
            format!("{} of {required} required approvals", approvers.len()),
        )
        .with_details(
            json!({"approvals": approvers.len(), "required": required, "approvers": approvers}),
        ));
    }
    Ok(approvers)
}

/// Step 3: consume the approvals, swap the pointer, record the history, apply a Project
/// contract's approval policy.
pub(crate) async fn write(
    tx: &mut PgConnection,
    actor: &Actor,
    t: &Target,
    approvers: Vec<String>,
) -> Result<Activation> {
    let (project, rev, kind) = (&t.project, &t.rev, t.kind);
    let revision_id = rev.revision_id;
    let activation_id = Uuid::now_v7();
    sqlx::query(
        "UPDATE activation_approvals SET consumed_by = $2 \
         WHERE revision_id = $1 AND consumed_by IS NULL AND void_reason IS NULL AND expires_at > now()",
    )
    .bind(revision_id)
    .bind(activation_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO active_revisions (project_id, kind, name, revision_id, revision, body_hash, activation_id, activated_by, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp()) \
         ON CONFLICT (project_id, kind, name) DO UPDATE SET revision_id = EXCLUDED.revision_id, \
         revision = EXCLUDED.revision, body_hash = EXCLUDED.body_hash, activation_id = EXCLUDED.activation_id, \
         activated_by = EXCLUDED.activated_by, activated_at = clock_timestamp()",
    )
    .bind(project.as_str())
    .bind(kind.as_str())
    .bind(&rev.name)
    .bind(revision_id)
    .bind(rev.revision)
    .bind(&rev.body_hash)
    .bind(activation_id)
    .bind(&actor.principal)
    .execute(&mut *tx)
    .await?;
    let is_rollback = t
        .current
        .as_ref()
        .is_some_and(|c| c.revision > rev.revision);
    let previous = t.current.as_ref().map(|c| c.revision_id);
    sqlx::query(
        "INSERT INTO activation_history (project_id, activation_id, kind, name, revision_id, revision, body_hash, \
         previous_revision_id, is_rollback, approvers, activated_by, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, clock_timestamp())",
    )
    .bind(project.as_str())
    .bind(activation_id)
    .bind(kind.as_str())
    .bind(&rev.name)
    .bind(revision_id)
    .bind(rev.revision)
    .bind(&rev.body_hash)
    .bind(previous)
    .bind(is_rollback)
    .bind(&approvers)
    .bind(&actor.principal)
    .execute(&mut *tx)
    .await?;
    if kind == ContractKind::Project {
        // The active Project contract governs the project's approval policy from now on.
        if let Ok(Contract::Project(pc)) = contracts::validate(kind, &rev.body) {
            sqlx::query(
                "UPDATE projects SET required_approvals = $1, approval_ttl_seconds = $2, allow_destructive = $3, \
                 display_name = $4, updated_at = now() WHERE project_id = $5",
            )
            .bind(i32::from(pc.approval.required_approvals))
            .bind(pc.approval.ttl_seconds as i32)
            .bind(pc.allow_destructive_tools)
            .bind(&pc.display_name)
            .bind(project.as_str())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(Activation {
        activation_id,
        kind: kind.as_str().into(),
        name: rev.name.clone(),
        revision_id,
        revision: rev.revision,
        body_hash: rev.body_hash.clone(),
        previous_revision_id: previous,
        is_rollback,
        approvers,
    })
}

/// Step 4: the gateway registry tables mirror the active MCP Gateway revision, written
/// atomically with the activation (migrations/0005).
pub(crate) async fn materialise_gateway(tx: &mut PgConnection, t: &Target) -> Result<()> {
    if t.kind == ContractKind::McpGateway
        && let Ok(Contract::McpGateway(g)) = contracts::validate(t.kind, &t.rev.body)
    {
        crate::registry::materialize(tx, t.project.as_str(), t.rev.revision_id, &g).await?;
    }
    Ok(())
}

/// Step 5: the audit row.
pub(crate) async fn audit(
    tx: &mut PgConnection,
    actor: &Actor,
    t: &Target,
    a: &Activation,
) -> Result<()> {
    audit::record(
        tx,
        Entry::ok(
            &actor.principal,
            if a.is_rollback { "revision.rollback" } else { "revision.activate" },
            format!("{}/{}@{}", t.kind, t.rev.name, t.rev.revision),
            json!({"revision_id": a.revision_id, "activation_id": a.activation_id, "previous_revision_id": a.previous_revision_id, "approvers": a.approvers}),
        ),
    )
    .await
}

/// Step 6: NOTIFY listeners (the projection sink, the operator); PostgreSQL delivers it only
/// when the transaction commits.
pub(crate) async fn notify(tx: &mut PgConnection, t: &Target, a: &Activation) -> Result<()> {
    let payload = json!({
        "project_id": t.project.as_str(), "kind": a.kind, "name": a.name,
        "revision_id": a.revision_id, "revision": a.revision, "body_hash": a.body_hash,
        "activation_id": a.activation_id,
    });
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ACTIVATION_CHANNEL)
        .bind(payload.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// After the commit: the consumed approvals' Redis duplicate keys are no longer needed.
pub(crate) async fn forget_approvals(coord: &Coord, a: &Activation) {
    let keys: Vec<String> = a
        .approvers
        .iter()
        .filter_map(|x| tenancy::redis_key("approval", &format!("{}:{x}", a.revision_id)).ok())
        .collect();
    coord.del(&keys).await;
}
