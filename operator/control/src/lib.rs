//! The control plane service: projects, keys, artifacts and the contract lifecycle
//! draft → published (signed, immutable) → active (M-of-N approvals).
//!
//! One service is shared by the CLI and the HTTP API. Tenant operations take the project from
//! the task-local tenant context ([`awooop_store::tenancy`]); platform operations (creating and listing
//! projects, minting API keys) require an admin [`Actor`] and run in audited platform scope.

pub use awooop_core::migration;
mod activate;
pub mod apply;
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

/// PostgreSQL channel notified (in the activating transaction) on every activation.
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

    // ---------------------------------------------------------------------------------------
    // Platform operations

    pub async fn create_project(&self, actor: &Actor, req: NewProject) -> Result<ProjectView> {
        actor.require_admin()?;
        let id = ProjectId::parse(&req.project_id)?;
        let name = req.display_name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(Error::new(
                ErrorCode::ProjectInvalid,
                "display_name must be 1..200 characters",
            ));
        }
        let required = req.required_approvals.unwrap_or(2);
        if !(1..=10).contains(&required) {
            return Err(Error::new(
                ErrorCode::ProjectInvalid,
                "required_approvals must be between 1 and 10",
            ));
        }
        let mut tx = self
            .db
            .platform(
                &actor.principal,
                "project.create",
                json!({"project_id": id.as_str()}),
            )
            .await?;
        Db::enter_project(&mut tx, &id).await?;
        let inserted = sqlx::query(
            "INSERT INTO projects (project_id, display_name, required_approvals) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(required)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::new(
                ErrorCode::ProjectExists,
                "project already exists",
            ));
        }
        sqlx::query(
            "INSERT INTO project_migration_state (project_id, mode, changed_by) VALUES ($1, 'shadow', $2)",
        )
        .bind(id.as_str())
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO project_migration_history (project_id, change_id, from_mode, to_mode, forced, changed_by) \
             VALUES ($1, $2, NULL, 'shadow', false, $3)",
        )
        .bind(id.as_str())
        .bind(Uuid::now_v7())
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        tenancy::scope(id.clone(), async {
            audit::record(
                &mut tx,
                Entry::ok(&actor.principal, "project.create", id.as_str(), json!({})),
            )
            .await
        })
        .await?;
        let project = repo::project(&mut tx).await?.ok_or_else(|| {
            Error::new(ErrorCode::Internal, "project row not visible after insert")
        })?;
        tx.commit().await?;
        Ok(ProjectView {
            project,
            mode: "shadow".into(),
        })
    }

    pub async fn list_projects(&self, actor: &Actor) -> Result<Vec<ProjectView>> {
        actor.require_admin()?;
        let mut tx = self
            .db
            .platform(&actor.principal, "project.list", json!({}))
            .await?;
        let rows: Vec<ProjectRow> = sqlx::query_as(
            "SELECT project_id, display_name, status, required_approvals, approval_ttl_seconds, \
             allow_destructive, created_at FROM projects ORDER BY project_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for project in rows {
            // The migration mode is tenant data: read it inside each tenant's own scope.
            let id = ProjectId::parse(&project.project_id)?;
            let mode = tenancy::scope(id, self.mode()).await?;
            out.push(ProjectView {
                project,
                mode: mode.as_str().into(),
            });
        }
        Ok(out)
    }

    pub async fn create_api_key(
        &self,
        actor: &Actor,
        project: &ProjectId,
        principal: &str,
        roles: Vec<Role>,
    ) -> Result<CreatedApiKey> {
        self.create_api_key_bound(actor, project, principal, roles, None)
            .await
    }

    /// Mint an API key; a key with the runner role must carry its [`auth::KeyBinding`] (the
    /// agents and environments it may act for), any other key must not.
    pub async fn create_api_key_bound(
        &self,
        actor: &Actor,
        project: &ProjectId,
        principal: &str,
        roles: Vec<Role>,
        binding: Option<auth::KeyBinding>,
    ) -> Result<CreatedApiKey> {
        actor.require_admin()?;
        match (&binding, roles.contains(&Role::Runner)) {
            (Some(b), true) => b.validate()?,
            (None, false) => {}
            (None, true) => {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "a runner key needs agents and environments (use [\"*\"] deliberately for any)",
                ));
            }
            (Some(_), false) => {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "agents and environments bind runner keys only",
                ));
            }
        }
        if !is_principal(principal) {
            return Err(Error::new(
                ErrorCode::ReqInvalidParam,
                "principal must match [A-Za-z0-9._@-]{1,128}",
            ));
        }
        if roles.is_empty() {
            return Err(Error::new(
                ErrorCode::ReqInvalidParam,
                "an API key needs at least one role",
            ));
        }
        let minted = auth::mint_api_key(project);
        tenancy::scope(project.clone(), async {
            let mut tx = self.db.tenant().await?;
            self.require_active_project(&mut tx).await?;
            let roles_s: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            sqlx::query(
                "INSERT INTO api_keys (project_id, key_id, secret_hash, principal, roles, agents, environments) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(project.as_str())
            .bind(&minted.key_id)
            .bind(&minted.secret_hash)
            .bind(principal)
            .bind(&roles_s)
            .bind(binding.as_ref().map(|b| &b.agents))
            .bind(binding.as_ref().map(|b| &b.environments))
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                Entry::ok(
                    &actor.principal,
                    "apikey.create",
                    &minted.key_id,
                    json!({"principal": principal, "roles": roles_s, "binding": binding}),
                ),
            )
            .await?;
            tx.commit().await?;
            Ok(CreatedApiKey {
                project_id: project.as_str().into(),
                key_id: minted.key_id.clone(),
                principal: principal.into(),
                roles,
                token: minted.token.clone(),
            })
        })
        .await
    }

    /// Revoke an API key of the current project: it stops authenticating at once.
    pub async fn revoke_api_key(&self, actor: &Actor, key_id: &str) -> Result<()> {
        actor.require_admin()?;
        self.revoke("api_keys", "apikey.revoke", actor, key_id)
            .await
    }

    /// Revoke a signing key of the current project: new publishes with it are refused
    /// (revisions it signed earlier stay valid).
    pub async fn revoke_signing_key(&self, actor: &Actor, key_id: &str) -> Result<()> {
        actor.require_admin()?;
        self.revoke("signing_keys", "signing_key.revoke", actor, key_id)
            .await
    }

    async fn revoke(
        &self,
        table: &'static str,
        action: &'static str,
        actor: &Actor,
        key_id: &str,
    ) -> Result<()> {
        let mut tx = self.db.tenant().await?;
        // `table` is one of two literals above, never input.
        let res = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"
        )))
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::not_found("active key"));
        }
        audit::record(
            &mut tx,
            Entry::ok(&actor.principal, action, key_id, json!({})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Register the fingerprint of a keyring key for the current project.
    pub async fn register_signing_key(&self, actor: &Actor, key_id: &str) -> Result<Value> {
        actor.require_admin()?;
        if !signing::is_key_id(key_id) {
            return Err(Error::new(
                ErrorCode::ReqInvalidParam,
                "key_id must match [A-Za-z0-9._-]{1,64}",
            ));
        }
        let fp = {
            let ring = self.keyring.read().expect("keyring lock");
            let material = ring.get(key_id).ok_or_else(|| {
                Error::new(
                    ErrorCode::ContractSigningKey,
                    "key id is not present in the server's keyring",
                )
            })?;
            signing::fingerprint(material)
        };
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        self.require_active_project(&mut tx).await?;
        let res = sqlx::query(
            "INSERT INTO signing_keys (project_id, key_id, fingerprint) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id, key_id) DO NOTHING",
        )
        .bind(project.as_str())
        .bind(key_id)
        .bind(&fp)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::new(
                ErrorCode::ContractSigningKey,
                "a signing key with this id is already registered",
            ));
        }
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "signing_key.register",
                key_id,
                json!({"fingerprint": fp}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(json!({"key_id": key_id, "fingerprint": fp}))
    }

    // ---------------------------------------------------------------------------------------
    // Tenant reads

    pub async fn project(&self) -> Result<ProjectView> {
        let mut tx = self.db.tenant().await?;
        let project = repo::project(&mut tx)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::ProjectNotFound, "project not found"))?;
        let mode: String = sqlx::query_scalar("SELECT mode FROM project_migration_state")
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_else(|| "shadow".into());
        tx.commit().await?;
        Ok(ProjectView { project, mode })
    }

    pub async fn mode(&self) -> Result<MigrationMode> {
        let mut tx = self.db.tenant().await?;
        let mode: Option<String> = sqlx::query_scalar("SELECT mode FROM project_migration_state")
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        // A project without a recorded mode is treated as shadow: the safest mode.
        mode.map(|m| MigrationMode::parse(&m))
            .transpose()
            .map(|m| m.unwrap_or(MigrationMode::Shadow))
    }

    /// The runtime-facing read: the active revision of a contract. Drafts are never visible.
    pub async fn active(&self, kind: ContractKind, name: &str) -> Result<ActiveContract> {
        let mut tx = self.db.tenant().await?;
        let found = repo::active_body(&mut tx, kind, name).await?;
        tx.commit().await?;
        let (pointer, body) =
            found.ok_or_else(|| Error::not_found("active revision of this contract"))?;
        Ok(ActiveContract { pointer, body })
    }

    /// The migration mode and the active revisions of several contracts (kind, name, with
    /// body), read in one tenant transaction with one statement: one snapshot and three round
    /// trips, where [`Self::mode`] and one [`Self::active`] per contract take three each. A
    /// project without a recorded mode is in shadow, as for [`Self::mode`]; a contract without
    /// an active revision is `None` at its place. What a run is prepared against.
    #[allow(clippy::type_complexity)]
    pub async fn mode_and_active(
        &self,
        wanted: &[(ContractKind, &str, bool)],
    ) -> Result<(MigrationMode, Vec<Option<(ActiveRow, Option<Value>)>>)> {
        let mut tx = self.db.tenant().await?;
        let (mode, found) = repo::mode_and_active(&mut tx, wanted).await?;
        tx.commit().await?;
        let mode = mode
            .map(|m| MigrationMode::parse(&m))
            .transpose()?
            .unwrap_or(MigrationMode::Shadow);
        Ok((mode, found))
    }

    /// The active revision parsed into its typed contract.
    pub async fn active_typed(
        &self,
        kind: ContractKind,
        name: &str,
    ) -> Result<(ActiveRow, Contract)> {
        let a = self.active(kind, name).await?;
        // Published bodies were validated at publish; a failure here means a schema change
        // made an old revision unreadable, which must not be silently accepted.
        let c = contracts::validate(kind, &a.body).map_err(contracts::violations_error)?;
        Ok((a.pointer, c))
    }

    pub async fn active_list(&self) -> Result<Vec<ActiveRow>> {
        let mut tx = self.db.tenant().await?;
        let rows = repo::active_all(&mut tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn revision(
        &self,
        kind: ContractKind,
        name: &str,
        revision: i32,
    ) -> Result<RevisionRow> {
        let mut tx = self.db.tenant().await?;
        let row = repo::revision_by_number(&mut tx, kind, name, revision).await?;
        tx.commit().await?;
        row.ok_or_else(|| Error::not_found("revision"))
    }

    pub async fn revision_by_id(&self, id: Uuid) -> Result<RevisionRow> {
        let mut tx = self.db.tenant().await?;
        let row = repo::revision_by_id(&mut tx, id).await?;
        tx.commit().await?;
        row.ok_or_else(|| Error::not_found("revision"))
    }

    pub async fn history(&self, kind: ContractKind, name: &str) -> Result<History> {
        let mut tx = self.db.tenant().await?;
        let revisions = repo::revisions(&mut tx, kind, name).await?;
        let activations = repo::activations(&mut tx, kind, name).await?;
        let active = repo::active(&mut tx, kind, name).await?;
        tx.commit().await?;
        if revisions.is_empty() {
            return Err(Error::not_found("contract"));
        }
        Ok(History {
            kind: kind.as_str().into(),
            name: name.into(),
            active_revision_id: active.map(|a| a.revision_id),
            revisions: revisions
                .into_iter()
                .map(|r| RevisionSummary {
                    revision_id: r.revision_id,
                    revision: r.revision,
                    body_hash: r.body_hash,
                    published_by: r.published_by,
                    published_at: r.published_at,
                })
                .collect(),
            activations,
        })
    }

    /// Unified diff of two published revisions (pretty, key-sorted JSON).
    pub async fn diff(&self, kind: ContractKind, name: &str, from: i32, to: i32) -> Result<String> {
        let a = self.revision(kind, name, from).await?;
        let b = self.revision(kind, name, to).await?;
        let (a_name, b_name) = (
            format!("{kind}/{name}@{from}"),
            format!("{kind}/{name}@{to}"),
        );
        // Diffing is quadratic in the worst case: it runs on the blocking pool (never on an
        // async worker thread shared with other tenants' requests), on bounded inputs and
        // with a deadline after which the algorithm approximates.
        tokio::task::spawn_blocking(move || bounded_diff_json(&a.body, &b.body, &a_name, &b_name))
            .await
            .map_err(Error::internal)?
    }

    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditRow>> {
        let mut tx = self.db.tenant().await?;
        let rows = sqlx::query_as(
            "SELECT audit_id, at, actor, action, target, outcome, code, trace_id, details \
             FROM audit_log ORDER BY at DESC, audit_id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 1000))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    // ---------------------------------------------------------------------------------------
    // Artifacts

    pub async fn put_artifact(
        &self,
        actor: &Actor,
        artifact_ref: &str,
        artifact_kind: &str,
        media_type: &str,
        content: &[u8],
    ) -> Result<ArtifactView> {
        actor.require(Role::Author)?;
        if artifact_ref.is_empty()
            || artifact_ref.len() > 512
            || artifact_ref.chars().any(char::is_control)
        {
            return Err(Error::new(
                ErrorCode::ArtifactInvalid,
                "artifact ref must be 1..512 printable characters",
            ));
        }
        if !["prompt", "schema", "eval", "replay", "other"].contains(&artifact_kind) {
            return Err(Error::new(
                ErrorCode::ArtifactInvalid,
                "artifact kind must be prompt, schema, eval, replay or other",
            ));
        }
        if artifact_kind == "schema" {
            let parsed: Value = serde_json::from_slice(content).map_err(|_| {
                Error::new(ErrorCode::ArtifactInvalid, "a schema artifact must be JSON")
            })?;
            if let Err(why) = contracts::tenant_schema::compile(&parsed) {
                return Err(Error::new(
                    ErrorCode::ArtifactInvalid,
                    format!("a schema artifact must be a valid JSON Schema: it {why}"),
                ));
            }
        }
        let sha = format!("sha256:{}", hex::encode(Sha256::digest(content)));
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        self.require_active_project(&mut tx).await?;
        sqlx::query(
            "INSERT INTO artifact_refs (project_id, artifact_ref, sha256, artifact_kind, media_type, size_bytes, content, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(project.as_str())
        .bind(artifact_ref)
        .bind(&sha)
        .bind(artifact_kind)
        .bind(media_type)
        .bind(content.len() as i64)
        .bind(content)
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "artifact.put",
                artifact_ref,
                json!({"sha256": sha, "size": content.len()}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(ArtifactView {
            artifact_ref: artifact_ref.into(),
            sha256: sha,
            size_bytes: content.len() as i64,
        })
    }

    /// Content of a registered artifact (for executors: prompts, output schemas).
    pub async fn artifact(&self, artifact_ref: &str, sha256: &str) -> Result<Vec<u8>> {
        let mut tx = self.db.tenant().await?;
        let content: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT content FROM artifact_refs WHERE artifact_ref = $1 AND sha256 = $2",
        )
        .bind(artifact_ref)
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        content
            .flatten()
            .ok_or_else(|| Error::new(ErrorCode::ContractArtifactMissing, "artifact not found"))
    }

    // ---------------------------------------------------------------------------------------
    // Drafts

    pub fn validate(&self, kind: ContractKind, body: &Value) -> ValidationReport {
        match contracts::validate(kind, body) {
            Ok(_) => ValidationReport {
                valid: true,
                body_hash: Some(contracts::canonical::body_hash(body)),
                violations: vec![],
            },
            Err(violations) => ValidationReport {
                valid: false,
                body_hash: None,
                violations,
            },
        }
    }

    pub async fn create_draft(
        &self,
        actor: &Actor,
        kind: ContractKind,
        name: &str,
        body: Value,
    ) -> Result<DraftView> {
        actor.require(Role::Author)?;
        check_name(name)?;
        contracts::validate(kind, &body).map_err(contracts::violations_error)?;
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        self.require_active_project(&mut tx).await?;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO contract_drafts (project_id, draft_id, kind, name, body, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(project.as_str())
        .bind(id)
        .bind(kind.as_str())
        .bind(name)
        .bind(&body)
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "draft.create",
                format!("{kind}/{name}"),
                json!({"draft_id": id}),
            ),
        )
        .await?;
        let view = self.draft_view(&mut tx, id).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn update_draft(&self, actor: &Actor, id: Uuid, body: Value) -> Result<DraftView> {
        actor.require(Role::Author)?;
        let mut tx = self.db.tenant().await?;
        let draft = repo::draft(&mut tx, id, true)
            .await?
            .ok_or_else(|| Error::not_found("draft"))?;
        let kind = ContractKind::parse(&draft.kind)?;
        contracts::validate(kind, &body).map_err(contracts::violations_error)?;
        sqlx::query("UPDATE contract_drafts SET body = $2, updated_at = now() WHERE draft_id = $1")
            .bind(id)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "draft.update",
                format!("{kind}/{}", draft.name),
                json!({"draft_id": id}),
            ),
        )
        .await?;
        let view = self.draft_view(&mut tx, id).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn delete_draft(&self, actor: &Actor, id: Uuid) -> Result<()> {
        actor.require(Role::Author)?;
        let mut tx = self.db.tenant().await?;
        let res = sqlx::query("DELETE FROM contract_drafts WHERE draft_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(Error::not_found("draft"));
        }
        audit::record(
            &mut tx,
            Entry::ok(&actor.principal, "draft.delete", id.to_string(), json!({})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_draft(&self, id: Uuid) -> Result<DraftView> {
        let mut tx = self.db.tenant().await?;
        let view = self.draft_view(&mut tx, id).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn list_drafts(&self) -> Result<Vec<DraftRow>> {
        let mut tx = self.db.tenant().await?;
        let rows = repo::drafts(&mut tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn draft_view(&self, conn: &mut sqlx::PgConnection, id: Uuid) -> Result<DraftView> {
        let project = tenancy::require()?;
        let draft = repo::draft(conn, id, false)
            .await?
            .ok_or_else(|| Error::not_found("draft"))?;
        let kind = ContractKind::parse(&draft.kind)?;
        let next_revision = repo::next_revision(conn, kind, &draft.name).await?;
        let body_hash = contracts::canonical::body_hash(&draft.body);
        let signing_message = signing::publish_message(
            project.as_str(),
            kind,
            &draft.name,
            next_revision,
            &body_hash,
        );
        Ok(DraftView {
            draft,
            next_revision,
            body_hash,
            signing_message,
        })
    }

    /// Sign a draft with a key from the local keyring (the CLI's publish path).
    pub async fn sign_draft(&self, id: Uuid, key_id: &str) -> Result<PublishRequest> {
        let view = self.get_draft(id).await?;
        let ring = self.keyring.read().expect("keyring lock");
        let key = ring.get(key_id).ok_or_else(|| {
            Error::new(
                ErrorCode::ContractSigningKey,
                "key id is not in the local keyring",
            )
        })?;
        Ok(PublishRequest {
            revision: view.next_revision,
            key_id: key_id.into(),
            signature: signing::sign(key, &view.signing_message),
            body_hash: Some(view.body_hash),
        })
    }

    // ---------------------------------------------------------------------------------------
    // Publish

    /// Freeze a draft into an immutable, signed revision. Nothing is written unless every
    /// check passes; denials are audited.
    pub async fn publish(
        &self,
        actor: &Actor,
        draft_id: Uuid,
        req: PublishRequest,
    ) -> Result<RevisionRow> {
        let res = self.publish_inner(actor, draft_id, &req).await;
        if let Err(e) = &res
            && matches!(
                e.code,
                ErrorCode::ContractBadSignature
                    | ErrorCode::ContractSignatureReplay
                    | ErrorCode::ContractSigningKey
                    | ErrorCode::AuthForbidden
            )
        {
            audit::record_detached(
                &self.db,
                Entry::denied(
                    &actor.principal,
                    "revision.publish",
                    draft_id.to_string(),
                    e.code.as_str(),
                    json!({"key_id": req.key_id, "revision": req.revision}),
                ),
            )
            .await;
        }
        res
    }

    async fn publish_inner(
        &self,
        actor: &Actor,
        draft_id: Uuid,
        req: &PublishRequest,
    ) -> Result<RevisionRow> {
        actor.require(Role::Publisher)?;
        let project = tenancy::require()?;
        if req.signature.len() != 64
            || !req
                .signature
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::new(
                ErrorCode::ContractBadSignature,
                "signature must be 64 lowercase hex digits",
            ));
        }
        let mut tx = self.db.tenant().await?;
        self.require_active_project(&mut tx).await?;
        self.check_acl(&mut tx, actor, AclList::Publishers).await?;
        let draft = repo::draft(&mut tx, draft_id, true)
            .await?
            .ok_or_else(|| Error::not_found("draft"))?;
        let kind = ContractKind::parse(&draft.kind)?;
        let validated = contracts::validate_and_hash(kind, &draft.body)?;
        repo::lock_contract(&mut tx, kind, &draft.name).await?;
        // Replay first: a signature already used gets its precise code.
        let replayed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM publish_signatures WHERE signature = $1)",
        )
        .bind(&req.signature)
        .fetch_one(&mut *tx)
        .await?;
        if replayed {
            return Err(Error::new(
                ErrorCode::ContractSignatureReplay,
                "this signature was already used",
            ));
        }
        let next = repo::next_revision(&mut tx, kind, &draft.name).await?;
        if req.revision != next {
            return Err(Error::new(
                ErrorCode::ContractRevisionConflict,
                format!(
                    "the next revision is {next}, the signature is for {}",
                    req.revision
                ),
            )
            .with_details(json!({"expected_revision": next})));
        }
        if let Some(h) = &req.body_hash
            && h != &validated.body_hash
        {
            return Err(Error::new(
                ErrorCode::ContractRevisionConflict,
                "the draft changed after it was signed",
            )
            .with_details(json!({"body_hash": validated.body_hash})));
        }
        self.verify_signature(
            &mut tx,
            &project,
            kind,
            &draft.name,
            next,
            &validated.body_hash,
            req,
        )
        .await?;
        for a in validated.contract.artifact_refs() {
            let ok: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM artifact_refs WHERE artifact_ref = $1 AND sha256 = $2)",
            )
            .bind(&a.reference)
            .bind(&a.sha256)
            .fetch_one(&mut *tx)
            .await?;
            if !ok {
                return Err(Error::new(
                    ErrorCode::ContractArtifactMissing,
                    format!(
                        "artifact '{}' is not registered with hash {}",
                        a.reference, a.sha256
                    ),
                ));
            }
        }
        // A stdio provider may only name a catalog entry of the platform administrator's
        // (platform scope, its own audited transaction): E-CATALOG-001 otherwise.
        if let Contract::McpGateway(gw) = &validated.contract {
            awooop_policy::catalog_check_contract(&self.db, &actor.principal, gw).await?;
        }
        let revision_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO contract_revisions (project_id, revision_id, kind, name, revision, body_canonical, body_hash, published_by, source_draft_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(project.as_str())
        .bind(revision_id)
        .bind(kind.as_str())
        .bind(&draft.name)
        .bind(next)
        .bind(&validated.canonical)
        .bind(&validated.body_hash)
        .bind(&actor.principal)
        .bind(draft_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO publish_signatures (project_id, revision_id, key_id, signature) VALUES ($1, $2, $3, $4)",
        )
        .bind(project.as_str())
        .bind(revision_id)
        .bind(&req.key_id)
        .bind(&req.signature)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM contract_drafts WHERE draft_id = $1")
            .bind(draft_id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "revision.publish",
                format!("{kind}/{}@{next}", draft.name),
                json!({"revision_id": revision_id, "body_hash": validated.body_hash, "key_id": req.key_id}),
            ),
        )
        .await?;
        let row = repo::revision_by_id(&mut tx, revision_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::Internal, "published revision not visible"))?;
        tx.commit().await?;
        Ok(row)
    }

    #[allow(clippy::too_many_arguments)]
    async fn verify_signature(
        &self,
        conn: &mut sqlx::PgConnection,
        project: &ProjectId,
        kind: ContractKind,
        name: &str,
        revision: i32,
        body_hash: &str,
        req: &PublishRequest,
    ) -> Result<()> {
        let key_error = || {
            Error::new(
                ErrorCode::ContractSigningKey,
                "signing key unknown, revoked or unavailable",
            )
        };
        let fp: Option<String> = sqlx::query_scalar(
            "SELECT fingerprint FROM signing_keys WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(&req.key_id)
        .fetch_optional(conn)
        .await?;
        let fp = fp.ok_or_else(key_error)?;
        let ring = self.keyring.read().expect("keyring lock");
        let material = ring.get(&req.key_id).ok_or_else(key_error)?;
        // The keyring entry must be the registered key, not merely a key with the same id.
        if signing::fingerprint(material) != fp {
            return Err(key_error());
        }
        let message = signing::publish_message(project.as_str(), kind, name, revision, body_hash);
        if !signing::verify(material, &message, &req.signature) {
            return Err(Error::new(
                ErrorCode::ContractBadSignature,
                "publish signature does not verify",
            ));
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Approve and activate

    /// Record one approver's approval of a published revision. Redis (when configured) fronts
    /// duplicate detection with `SET NX`; PostgreSQL's partial unique index decides.
    pub async fn approve(&self, actor: &Actor, revision_id: Uuid) -> Result<ApprovalStatus> {
        let res = self.approve_inner(actor, revision_id).await;
        if let Err(e) = &res
            && matches!(
                e.code,
                ErrorCode::ContractDuplicateApproval
                    | ErrorCode::ContractApproverNotAllowed
                    | ErrorCode::AuthForbidden
            )
        {
            audit::record_detached(
                &self.db,
                Entry::denied(
                    &actor.principal,
                    "revision.approve",
                    revision_id.to_string(),
                    e.code.as_str(),
                    json!({}),
                ),
            )
            .await;
        }
        res
    }

    async fn approve_inner(&self, actor: &Actor, revision_id: Uuid) -> Result<ApprovalStatus> {
        actor.require(Role::Approver)?;
        if !is_principal(&actor.principal) {
            return Err(Error::new(
                ErrorCode::AuthForbidden,
                "approver name is not valid",
            ));
        }
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let p = self.require_active_project(&mut tx).await?;
        self.check_acl(&mut tx, actor, AclList::Approvers).await?;
        let rev = self.published_revision(&mut tx, revision_id).await?;
        let ttl = Duration::from_secs(p.approval_ttl_seconds as u64);
        let redis_key = tenancy::redis_key(
            "approval",
            &format!("{}:{}", rev.revision_id, actor.principal),
        )?;
        let redis_fresh = self.coord.set_nx(&redis_key, ttl).await;
        repo::void_expired_approvals(&mut tx, revision_id).await?;
        let inserted = sqlx::query(
            "INSERT INTO activation_approvals (project_id, approval_id, revision_id, approver, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
             ON CONFLICT (project_id, revision_id, approver) WHERE consumed_by IS NULL AND void_reason IS NULL DO NOTHING",
        )
        .bind(project.as_str())
        .bind(Uuid::now_v7())
        .bind(revision_id)
        .bind(&actor.principal)
        .bind(p.approval_ttl_seconds as f64)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::new(
                ErrorCode::ContractDuplicateApproval,
                "this approver already approved this revision",
            ));
        }
        if redis_fresh == Some(false) {
            // Redis remembered an approval PostgreSQL does not have (an earlier attempt rolled
            // back, or the key outlived a consumed approval). PostgreSQL decides; note it.
            tracing::debug!("redis approval marker existed without an open approval row");
        }
        let approvers = repo::open_approvers(&mut tx, revision_id).await?;
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "SELECT max(expires_at) FROM activation_approvals WHERE revision_id = $1 AND approver = $2",
        )
        .bind(revision_id)
        .bind(&actor.principal)
        .fetch_one(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "revision.approve",
                format!("{}/{}@{}", rev.kind, rev.name, rev.revision),
                json!({"revision_id": revision_id, "approvals": approvers.len(), "required": p.required_approvals}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(ApprovalStatus {
            revision_id,
            approvals: approvers.len(),
            approvers,
            required: p.required_approvals as usize,
            expires_at,
        })
    }

    /// Swap the active pointer to `revision_id` once enough approvals are present. Serialised
    /// per contract name; exactly one pointer exists per name (primary key). Sends NOTIFY on
    /// commit. Activating an older revision is a rollback.
    pub async fn activate(&self, actor: &Actor, revision_id: Uuid) -> Result<Activation> {
        actor.require(Role::Activator)?;
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let target = activate::lock(self, &mut tx, project, revision_id).await?;
        let approvers = activate::check_approvals(&mut tx, &target).await?;
        let activation = activate::write(&mut tx, actor, &target, approvers).await?;
        activate::materialise_gateway(&mut tx, &target).await?;
        activate::audit(&mut tx, actor, &target, &activation).await?;
        activate::notify(&mut tx, &target, &activation).await?;
        tx.commit().await?;
        tracing::info!(project = %target.project, kind = %activation.kind, name = %activation.name,
            revision = activation.revision, is_rollback = activation.is_rollback, "contract activated");
        activate::forget_approvals(&self.coord, &activation).await;
        Ok(activation)
    }

    pub(crate) async fn published_revision(
        &self,
        conn: &mut sqlx::PgConnection,
        id: Uuid,
    ) -> Result<RevisionRow> {
        if let Some(r) = repo::revision_by_id(conn, id).await? {
            return Ok(r);
        }
        let is_draft: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM contract_drafts WHERE draft_id = $1)")
                .bind(id)
                .fetch_one(conn)
                .await?;
        if is_draft {
            Err(Error::new(
                ErrorCode::ContractNotPublished,
                "this is a draft: publish it first",
            ))
        } else {
            Err(Error::not_found("revision"))
        }
    }

    // ---------------------------------------------------------------------------------------
    // Migration state

    pub async fn migration(&self) -> Result<MigrationView> {
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        let row: Option<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT mode, changed_by, changed_at FROM project_migration_state")
                .fetch_optional(&mut *tx)
                .await?;
        let history: Vec<MigrationChange> = sqlx::query_as(
            "SELECT from_mode, to_mode, forced, reason, changed_by, changed_at FROM project_migration_history \
             ORDER BY changed_at, change_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let (mode, changed_by, changed_at) =
            row.ok_or_else(|| Error::new(ErrorCode::ProjectNotFound, "project not found"))?;
        Ok(MigrationView {
            project_id: project.as_str().into(),
            mode,
            changed_by,
            changed_at,
            history,
        })
    }

    pub async fn set_mode(
        &self,
        actor: &Actor,
        to: MigrationMode,
        force: bool,
        reason: Option<&str>,
    ) -> Result<MigrationView> {
        actor.require(Role::Activator)?;
        let project = tenancy::require()?;
        let mut tx = self.db.tenant().await?;
        self.require_active_project(&mut tx).await?;
        let from: String =
            sqlx::query_scalar("SELECT mode FROM project_migration_state FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::new(ErrorCode::ProjectNotFound, "project not found"))?;
        let from = MigrationMode::parse(&from)?;
        migration::check_transition(from, to, force, reason)?;
        sqlx::query(
            "UPDATE project_migration_state SET mode = $1, changed_by = $2, changed_at = now()",
        )
        .bind(to.as_str())
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO project_migration_history (project_id, change_id, from_mode, to_mode, forced, reason, changed_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(project.as_str())
        .bind(Uuid::now_v7())
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(force)
        .bind(reason.map(str::trim))
        .bind(&actor.principal)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::ok(
                &actor.principal,
                "migration.set_mode",
                project.as_str(),
                json!({"from": from.as_str(), "to": to.as_str(), "forced": force, "reason": reason}),
            ),
        )
        .await?;
        tx.commit().await?;
        self.migration().await
    }

    // ---------------------------------------------------------------------------------------

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
