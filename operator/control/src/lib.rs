//! The control plane service: projects, keys, artifacts and the contract lifecycle
//! draft → published (signed, immutable) → active (M-of-N approvals).
//!
//! One service is shared by the CLI and the HTTP API. Tenant operations take the project from
//! the task-local tenant context ([`awooop_store::tenancy`]); platform operations (creating and listing
//! projects, minting API keys) require an admin [`Actor`] and run in audited platform scope.
//!
//! One `impl ControlPlane` per concern, each in its own file: `projects` (platform operations),
//! `reads`, `artifacts`, `drafts`, `publish`, `approve` (approvals; the activation's named steps
//! are in `activate`), `migration_state`; SQL lives in `repo`, contract application in `apply`,
//! gateway materialisation in `registry`. This file keeps the types and the shared checks.

pub use awooop_core::migration;
mod activate;
pub mod apply;
mod approve;
mod artifacts;
mod drafts;
pub mod invalidation;
mod migration_state;
mod projects;
mod publish;
mod reads;
pub mod registry;
pub mod repo;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use awooop_contracts::{self as contracts, Contract, ContractKind, signing};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::auth::{self, Actor, Role};
use awooop_store::coord::Coord;
use awooop_store::tenancy::{self, Db, ProjectId};
pub use migration::MigrationMode;
use repo::{ActivationRow, ActiveRow, DraftRow, ProjectRow, RevisionRow};

/// PostgreSQL channel notified (in the changing transaction) on every activation, every
/// migration-mode change and every change of a project's status or `allow_destructive`
/// (a trigger, migration 0078, so an edit in SQL notifies too); the payload is a JSON object
/// whose `project_id` names the project. Caches follow it with [`invalidation::follow`].
pub const ACTIVATION_CHANNEL: &str = "awooop_activation";

#[derive(Clone)]
pub struct ControlPlane {
    db: Db,
    coord: Coord,
    keyring: Arc<RwLock<signing::Keyring>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub project_id: String,
    pub display_name: String,
    #[serde(default)]
    pub required_approvals: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: ProjectRow,
    pub mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreatedApiKey {
    pub project_id: String,
    pub key_id: String,
    pub principal: String,
    pub roles: Vec<Role>,
    /// The full token. Shown once; only its hash is stored.
    pub token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DraftView {
    #[serde(flatten)]
    pub draft: DraftRow,
    /// The revision number a publish of this draft must sign.
    pub next_revision: i32,
    /// Hash of the canonical body, as a publish will compute it.
    pub body_hash: String,
    /// The exact message to sign with HMAC-SHA256 to publish this draft.
    pub signing_message: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub revision: i32,
    pub key_id: String,
    /// Hex HMAC-SHA256 of the signing message.
    pub signature: String,
    /// The hash the signer saw; when given it must match the current draft.
    #[serde(default)]
    pub body_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApprovalStatus {
    pub revision_id: Uuid,
    pub approvers: Vec<String>,
    pub approvals: usize,
    pub required: usize,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub activation_id: Uuid,
    pub kind: String,
    pub name: String,
    pub revision_id: Uuid,
    pub revision: i32,
    pub body_hash: String,
    pub previous_revision_id: Option<Uuid>,
    pub is_rollback: bool,
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveContract {
    #[serde(flatten)]
    pub pointer: ActiveRow,
    pub body: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub kind: String,
    pub name: String,
    pub active_revision_id: Option<Uuid>,
    pub revisions: Vec<RevisionSummary>,
    pub activations: Vec<ActivationRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionSummary {
    pub revision_id: Uuid,
    pub revision: i32,
    pub body_hash: String,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_hash: Option<String>,
    pub violations: Vec<contracts::Violation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationView {
    pub project_id: String,
    pub mode: String,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
    pub history: Vec<MigrationChange>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MigrationChange {
    pub from_mode: Option<String>,
    pub to_mode: String,
    pub forced: bool,
    pub reason: Option<String>,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub audit_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub code: Option<String>,
    pub trace_id: Option<String>,
    pub details: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactView {
    pub artifact_ref: String,
    pub sha256: String,
    pub size_bytes: i64,
}

impl ControlPlane {
    pub fn new(db: Db, coord: Coord, keyring: signing::Keyring) -> Self {
        Self {
            db,
            coord,
            keyring: Arc::new(RwLock::new(keyring)),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn coord(&self) -> &Coord {
        &self.coord
    }

    /// Replace the keyring (key rotation without restart).
    pub fn set_keyring(&self, keyring: signing::Keyring) {
        *self.keyring.write().expect("keyring lock") = keyring;
    }

    // Checks shared by the steps in the files below.

    pub(crate) async fn require_active_project(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<ProjectRow> {
        match repo::project(conn).await? {
            Some(p) if p.status == "active" => Ok(p),
            _ => Err(Error::new(ErrorCode::ProjectNotFound, "project not found")),
        }
    }

    /// When the active Project contract lists publishers/approvers, only they may act.
    async fn check_acl(
        &self,
        conn: &mut sqlx::PgConnection,
        actor: &Actor,
        list: AclList,
    ) -> Result<()> {
        let project = tenancy::require()?;
        let Some((_, body)) =
            repo::active_body(conn, ContractKind::Project, project.as_str()).await?
        else {
            return Ok(());
        };
        let Ok(Contract::Project(pc)) = contracts::validate(ContractKind::Project, &body) else {
            return Ok(());
        };
        let names = match list {
            AclList::Publishers => &pc.acl.publishers,
            AclList::Approvers => &pc.acl.approvers,
        };
        if names.is_empty() || names.iter().any(|n| n.0 == actor.principal) {
            Ok(())
        } else {
            Err(match list {
                AclList::Approvers => Error::new(
                    ErrorCode::ContractApproverNotAllowed,
                    "approver is not listed in the project's approver ACL",
                ),
                AclList::Publishers => Error::new(
                    ErrorCode::AuthForbidden,
                    "publisher is not listed in the project's publisher ACL",
                ),
            })
        }
    }
}

enum AclList {
    Publishers,
    Approvers,
}

fn is_principal(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::ReqInvalidParam,
            "contract name must match ^[a-z][a-z0-9-]{0,62}$",
        ))
    }
}

/// Unified diff of two JSON documents, pretty-printed with sorted keys so the diff shows
/// content changes, not ordering.
pub fn diff_json(a: &Value, b: &Value, a_name: &str, b_name: &str) -> String {
    diff_texts(&pretty_sorted(a), &pretty_sorted(b), a_name, b_name)
}

/// Largest pretty-printed revision body [`bounded_diff_json`] diffs (bytes, each side).
pub const MAX_DIFF_INPUT_BYTES: usize = 2 << 20;
/// After this long the line diff stops searching for a minimal edit script and approximates.
pub const DIFF_DEADLINE: Duration = Duration::from_secs(2);

/// [`diff_json`] with a size bound (`E-CONTRACT-016` above [`MAX_DIFF_INPUT_BYTES`]) and a
/// time bound ([`DIFF_DEADLINE`]). Blocking: call it from `spawn_blocking`.
pub fn bounded_diff_json(a: &Value, b: &Value, a_name: &str, b_name: &str) -> Result<String> {
    let (pa, pb) = (pretty_sorted(a), pretty_sorted(b));
    if pa.len() > MAX_DIFF_INPUT_BYTES || pb.len() > MAX_DIFF_INPUT_BYTES {
        return Err(Error::new(
            ErrorCode::ContractDiffTooLarge,
            format!(
                "revisions larger than {MAX_DIFF_INPUT_BYTES} bytes (pretty-printed) are not diffed; fetch both revisions instead"
            ),
        ));
    }
    Ok(diff_texts(&pa, &pb, a_name, b_name))
}

fn diff_texts(pa: &str, pb: &str, a_name: &str, b_name: &str) -> String {
    similar::TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_lines(pa, pb)
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string()
}

fn pretty_sorted(v: &Value) -> String {
    // Canonical JSON sorts keys; re-parse it into an ordered map for pretty printing.
    let canonical = contracts::canonical::canonicalize(v);
    let sorted: Value = serde_json::from_slice(&canonical).expect("canonical JSON parses");
    let mut s = serde_json::to_string_pretty(&sorted).expect("JSON serialises");
    s.push('\n');
    s
}
