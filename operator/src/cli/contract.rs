//! `awooop contract …`: validate, draft, publish, approve, activate and inspect contracts.

use super::*;

pub(super) fn read_json(file: &Path) -> anyhow::Result<Value> {
    let mut s = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        s = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(http::extract::parse_json(s.as_bytes())?)
}

pub(super) fn uuid(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "id must be a UUID"))
}

pub(super) async fn contract(cmd: ContractCmd) -> anyhow::Result<()> {
    match cmd {
        ContractCmd::Validate { kind, file } => {
            let kind = ContractKind::parse(&kind)?;
            let body = read_json(&file)?;
            match contracts::validate_and_hash(kind, &body) {
                Ok(v) => print(&serde_json::json!({"valid": true, "body_hash": v.body_hash})),
                Err(e) => Err(e.into()),
            }
        }
        ContractCmd::Draft {
            db,
            target,
            file,
            actor,
            output,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let body = read_json(&file)?;
            let v = tenancy::scope(
                ProjectId::parse(&target.project)?,
                p.control
                    .create_draft(&Actor::cli(&actor), kind, &target.name, body),
            )
            .await?;
            super::output::emit_one(&output, &v, |v| v.draft.draft_id.to_string())
        }
        ContractCmd::Publish {
            db,
            keyring,
            project,
            draft,
            key_id,
            actor,
            output,
        } => {
            let p = Platform::connect(&db, None, Some(&keyring)).await?;
            let draft = uuid(&draft)?;
            let v = tenancy::scope(ProjectId::parse(&project)?, async {
                let req = p.control.sign_draft(draft, &key_id).await?;
                p.control.publish(&Actor::cli(&actor), draft, req).await
            })
            .await?;
            super::output::emit_one(&output, &v, |v| v.revision_id.to_string())
        }
        ContractCmd::Approve {
            db,
            redis,
            project,
            revision,
            actor,
            output,
        } => {
            let p = Platform::connect(&db, Some(&redis), None).await?;
            let v = tenancy::scope(
                ProjectId::parse(&project)?,
                p.control.approve(&Actor::cli(&actor), uuid(&revision)?),
            )
            .await?;
            super::output::emit_one(&output, &v, |v| v.revision_id.to_string())
        }
        ContractCmd::Activate {
            db,
            redis,
            project,
            revision,
            actor,
            output,
        } => {
            let p = Platform::connect(&db, Some(&redis), None).await?;
            let v = tenancy::scope(
                ProjectId::parse(&project)?,
                p.control.activate(&Actor::cli(&actor), uuid(&revision)?),
            )
            .await?;
            super::output::emit_one(&output, &v, |v| v.activation_id.to_string())
        }
        ContractCmd::Show {
            db,
            target,
            revision,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let project = ProjectId::parse(&target.project)?;
            match revision {
                Some(n) => print(
                    &tenancy::scope(project, p.control.revision(kind, &target.name, n)).await?,
                ),
                None => {
                    print(&tenancy::scope(project, p.control.active(kind, &target.name)).await?)
                }
            }
        }
        ContractCmd::Diff {
            db,
            target,
            from,
            to,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            let d = tenancy::scope(
                ProjectId::parse(&target.project)?,
                p.control.diff(kind, &target.name, from, to),
            )
            .await?;
            print!("{d}");
            Ok(())
        }
        ContractCmd::History { db, target } => {
            let p = Platform::connect(&db, None, None).await?;
            let kind = ContractKind::parse(&target.kind)?;
            print(
                &tenancy::scope(
                    ProjectId::parse(&target.project)?,
                    p.control.history(kind, &target.name),
                )
                .await?,
            )
        }
    }
}
