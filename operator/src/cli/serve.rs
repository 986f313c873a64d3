//! `awooop serve`: the HTTP API only, for clusters.

use super::*;

/// `awooop serve`: the HTTP API alone, against an external PostgreSQL, with no worker (the
/// operator runs workers as Deployments) and no file sink.
pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    // Bind first: a taken port fails at once with a message naming the address, before a
    // database, a worker or child processes are started.
    let listener = http::bind(args.listen).await?;
    let mut p = Platform::connect(&args.db, Some(&args.redis), Some(&args.keyring)).await?;
    let secrets = kube_secrets(&args.secrets_namespace()).await;
    let in_cluster = secrets.is_some();
    let gateway = attach_gateway(&mut p, &args.gateway, false, secrets)?;
    let admin_token = args
        .admin_token
        .clone()
        .expect("validate() requires an admin token");
    let state = http::AppState {
        control: p.control.clone(),
        admin: Some(AdminToken::new(&admin_token)),
        max_body_bytes: args.max_body_bytes,
        metrics: crate::metrics::Metrics::new(),
        approvals: Some(std::sync::Arc::new(
            crate::gateway::in_process::KeyMinter::new(
                gateway.keys(),
                gateway.config().runtime_environment.clone(),
            ),
        )),
    };
    eprintln!(
        "AwoooP API and MCP gateway serving on http://{} (database: {}, redis: {}, Kubernetes Secrets: {})",
        args.listen,
        p.source(),
        if p.control.coord().is_configured() {
            "configured"
        } else {
            "not configured (optional)"
        },
        if in_cluster {
            "watched"
        } else {
            "no Kubernetes API"
        },
    );
    let mcp =
        http::mcp::McpState::new(gateway.clone(), p.control.db().clone(), args.max_body_bytes)
            .with_allowed_origins(args.gateway.gateway_allowed_origins.clone());
    let hub = channel_hub(&p, &args.channels, &state.metrics);
    // Approve/Reject buttons decide approval requests (chat users mapped in the Project
    // contract); other postbacks keep the default routing.
    let hub = hub.with_actions(std::sync::Arc::new(
        crate::channels::approvals::ApprovalActions::new(
            crate::runtime::approvals::ApprovalService::new(
                p.control.clone(),
                state.approvals.clone(),
            ),
        ),
    ));
    // Activations drop the hub's cached channels and run bases at once (the TTL bounds it).
    let _invalidation = hub.spawn_invalidation();
    let router = http::app(state)
        .merge(http::mcp::router(mcp))
        .merge(crate::channels::routes(hub));
    http::serve_on(listener, router, shutdown_signal()).await?;
    // Every queued call-audit row is written before exit.
    gateway.audit().flush().await;
    drop(p);
    Ok(())
}
