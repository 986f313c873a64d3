//! Platform operations: projects, API keys and signing keys (admin, audited platform scope).

use super::*;

impl ControlPlane {
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

    pub(crate) async fn revoke(
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
}
