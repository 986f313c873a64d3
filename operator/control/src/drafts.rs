//! Drafts: validate, create, update, delete, sign.

use super::*;

impl ControlPlane {
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

    pub(crate) async fn draft_view(
        &self,
        conn: &mut sqlx::PgConnection,
        id: Uuid,
    ) -> Result<DraftView> {
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
}
