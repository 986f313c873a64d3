//! Artifacts: content-addressed blobs (prompts, schemas) that contracts refer to.

use super::*;

impl ControlPlane {
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
}
