//! Publish: a signed draft becomes an immutable revision.

use super::*;

impl ControlPlane {
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

    pub(crate) async fn publish_inner(
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
    pub(crate) async fn verify_signature(
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
}
