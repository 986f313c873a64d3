//! Migration state: the project's mode (shadow → … → auto_remediate).

use super::*;

impl ControlPlane {
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
        // Listeners of activations (the gateway's and the hub's caches, the operator) take the
        // new mode at once instead of at their next TTL or resync; delivered on commit. They
        // read only `project_id`.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::ACTIVATION_CHANNEL)
            .bind(
                json!({"project_id": project.as_str(), "kind": "migration_mode", "mode": to.as_str()})
                    .to_string(),
            )
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.migration().await
    }
}
