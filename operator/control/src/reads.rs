//! Tenant reads: the project, its mode, active and historic revisions, the audit log.

use super::*;

impl ControlPlane {
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
}
