//! `awooop token`: mint per-run gateway tokens and approval tokens.

use super::*;

pub(super) async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    match cmd {
        TokenCmd::Mint {
            project,
            agent,
            environment,
            run,
            mode,
            ttl_seconds,
            state_dir,
            gateway_key: key,
        } => {
            let keys = crate::gateway::keys::GatewayKeys::derive(&gateway_key(
                key.as_deref(),
                &state_dir,
                false,
            )?);
            let mode = mode.as_deref().map(MigrationMode::parse).transpose()?;
            let t = crate::gateway::tokens::mint_run_token(
                &keys.run_token,
                &crate::gateway::tokens::RunTokenClaims {
                    project,
                    agent,
                    run_id: run,
                    environment,
                    mode,
                    iat: now,
                    exp: now + ttl_seconds,
                },
            )?;
            println!("{t}");
            Ok(())
        }
        TokenCmd::Approve {
            project,
            agent,
            environment,
            tool,
            arguments,
            run,
            approver,
            ttl_seconds,
            db,
            gateway_key: key,
        } => {
            use crate::gateway::approval;
            let keys = crate::gateway::keys::GatewayKeys::derive(&gateway_key(
                key.as_deref(),
                &db.state_dir,
                false,
            )?);
            let args: Value = http::extract::parse_json(arguments.as_bytes())?;
            if !args.is_object() {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "--arguments must be a JSON object",
                )
                .into());
            }
            if ttl_seconds <= 0 || ttl_seconds > approval::MAX_TTL_SECONDS {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    "--ttl-seconds must be 1..=604800",
                )
                .into());
            }
            let project_id = ProjectId::parse(&project)?;
            let hash = approval::arguments_hash(&args);
            let run = run.map(|r| r.to_string());
            let claims = approval::claims(
                approval::Expected {
                    project: &project,
                    agent: &agent,
                    environment: &environment,
                    run_id: run.as_deref(),
                    tool: &tool,
                    args_sha256: &hash,
                },
                &approver,
                now,
                ttl_seconds,
            );
            // Break-glass bypasses the approval requests' M-of-N: it leaves its own trail, and
            // no token is printed unless that row is committed (fail closed).
            let p = Platform::connect(&db, None, None).await?;
            let pool = p.control.db().clone();
            tenancy::scope(project_id, async {
                let mut tx = pool.tenant().await?;
                crate::audit::record(
                    &mut tx,
                    crate::audit::Entry {
                        actor: &format!("cli:{approver}"),
                        action: "approval.break_glass",
                        target: Some(tool.clone()),
                        outcome: crate::audit::Outcome::Ok,
                        code: None,
                        trace_id: None,
                        details: serde_json::json!({
                            "agent": agent,
                            "environment": environment,
                            "run_id": claims.run_id,
                            "args_sha256": claims.args_sha256,
                            "jti": claims.jti,
                            "expires_at": claims.exp,
                        }),
                    },
                )
                .await?;
                tx.commit().await?;
                Ok::<_, Error>(())
            })
            .await?;
            println!("{}", approval::mint(&keys.approval, &claims));
            Ok(())
        }
    }
}
