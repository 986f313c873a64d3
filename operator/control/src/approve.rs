//! Approve and activate: M-of-N approvals, then the activation steps (activate.rs).

use super::*;

impl ControlPlane {
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

    pub(crate) async fn approve_inner(
        &self,
        actor: &Actor,
        revision_id: Uuid,
    ) -> Result<ApprovalStatus> {
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
}
