//! `awooop approval list|approve|reject`: the same decisions as
//! `POST /v1/platform/approvals/{id}/decisions`, for an operator with database access (the
//! principal named with `--as` must still be an eligible approver of the request).

use super::*;
use crate::runtime::approvals::{ApprovalService, Decision};

pub(super) async fn approval(cmd: ApprovalCmd) -> anyhow::Result<()> {
    match cmd {
        ApprovalCmd::List {
            db,
            project,
            state,
            limit,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let svc = ApprovalService::new(p.control.clone(), None);
            let rows = tenancy::scope(
                ProjectId::parse(&project)?,
                svc.list(state.as_deref(), limit),
            )
            .await?;
            print(&rows)
        }
        ApprovalCmd::Approve(a) => decide(a, Decision::Approve).await,
        ApprovalCmd::Reject(a) => decide(a, Decision::Reject).await,
    }
}

async fn decide(a: ApprovalDecisionArgs, decision: Decision) -> anyhow::Result<()> {
    a.gateway.validate()?;
    let project = ProjectId::parse(&a.project)?;
    let p = Platform::connect(&a.db, None, None).await?;
    // Reaching the quorum mints the approval token with the gateway's key (the key file of
    // `awooop up`, or AWOOOP_GATEWAY_KEY), bound to the workers' environment.
    let master = gateway_key(a.gateway.gateway_key.as_deref(), &p.state_dir, false)?;
    let keys = crate::gateway::keys::GatewayKeys::derive(&master);
    let minter = crate::gateway::in_process::KeyMinter::new(
        &keys,
        a.gateway.gateway_runtime_environment.clone(),
    );
    let svc = ApprovalService::new(p.control.clone(), Some(std::sync::Arc::new(minter)));
    let r = tenancy::scope(
        project,
        svc.decide(&a.approver, "cli", a.id, decision, a.comment.as_deref()),
    )
    .await?;
    print(&r)
}
