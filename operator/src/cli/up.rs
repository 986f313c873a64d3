//! `awooop up`: the whole platform on one machine (API, worker, gateway, file sink).

use super::*;

/// `awooop up`: the whole platform locally.
pub(super) async fn up(args: UpArgs) -> anyhow::Result<()> {
    args.validate()?;
    // Bind first: a taken port fails at once with a message naming the address, before a
    // database, a worker or child processes are started.
    let listener = http::bind(args.listen).await?;
    let mut p = Platform::connect(&args.db, Some(&args.redis), Some(&args.keyring)).await?;
    // Local mode: tenants' MCP upstreams and model providers on this machine (127.0.0.0/8,
    // ::1, localhost) are allowed for every project, in this process only (nothing stored).
    // Anything else needs `awooop egress allow`, as in a cluster.
    p.policy = p.policy.clone().allow_loopback();
    tracing::warn!(
        "local mode: egress to loopback (127.0.0.0/8, ::1, localhost) is allowed for every project; other destinations need `awooop egress allow`"
    );
    if args.gateway.upstream.stdio_isolation != "same-uid" && !awooop_policy::running_as_root() {
        tracing::warn!(
            "stdio catalog children run as one uid per tenant, which needs root or CAP_SETUID/CAP_SETGID; without them they fail to start (pass --stdio-isolation same-uid for a single trusted tenant on a developer machine)"
        );
    }
    let gateway = attach_gateway(&mut p, &args.gateway, true, None)?;
    let admin_token = match &args.admin_token {
        Some(t) => t.clone(),
        None => {
            let path = p.state_dir.join("admin-token");
            if path.exists() {
                std::fs::read_to_string(&path)?.trim().to_string()
            } else {
                let t = AdminToken::generate();
                write_private(&path, t.as_bytes())?;
                t
            }
        }
    };
    // A local signing key for the seeded project, so the whole lifecycle works out of the box.
    let keyring_file = keyring_path(Some(&args.keyring), &p.state_dir);
    let awoooi = ProjectId::parse("awoooi")?;
    let has_key: bool = tenancy::scope(awoooi.clone(), async {
        let mut tx = p.control.db().tenant().await?;
        let n: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE key_id = 'local')")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok::<_, Error>(n)
    })
    .await?;
    if !has_key && args.keyring.keyring.is_none() {
        create_signing_key(&p, &keyring_file, &awoooi, "local").await?;
    }
    // Tenants onboarded from folders (the same path as `awooop project onboard`).
    for dir in &args.onboard {
        let done = crate::apply::onboard_local(&p, &keyring_file, dir).await?;
        for line in done.lines() {
            eprintln!("  onboard {}: {line}", dir.display());
        }
    }
    // The second tenant of the example (docs/ewoooc.md), onboarded beside awoooi through the
    // same path as `awooop project onboard --from DIR` (from the copy of docs/examples/ewoooc
    // this binary ships, written to the state folder). Its MCP server is this binary's hidden
    // `market-mcp` command, registered in the stdio catalog. A failure is reported and `up`
    // goes on: the example is a convenience, the platform works without it.
    if args.keyring.keyring.is_none() {
        match crate::example::onboard_for_up(&p, &keyring_file).await {
            Ok((catalog, dir, done)) => {
                if catalog {
                    eprintln!(
                        "  onboard ewoooc: stdio catalog entry {} registered",
                        crate::example::CATALOG_ENTRY
                    );
                }
                for line in done.lines() {
                    eprintln!("  onboard {}: {line}", dir.display());
                }
            }
            Err(e) => tracing::warn!(error = %e, "the EwoooC example was not onboarded"),
        }
    }
    let metrics = crate::metrics::Metrics::new();
    let state = http::AppState {
        control: p.control.clone(),
        admin: Some(AdminToken::new(&admin_token)),
        max_body_bytes: args.max_body_bytes,
        metrics: metrics.clone(),
        approvals: Some(std::sync::Arc::new(
            crate::gateway::in_process::KeyMinter::new(
                gateway.keys(),
                gateway.config().runtime_environment.clone(),
            ),
        )),
    };
    eprintln!(
        "AwoooP is up\n  database: {}\n  redis:    {}\n  API:      http://{}\n  admin token: {} (file {})\n  keyring:  {}",
        p.source(),
        if p.control.coord().is_configured() {
            "configured"
        } else {
            "not configured (optional)"
        },
        args.listen,
        if args.admin_token.is_some() {
            "from AWOOOP_ADMIN_TOKEN"
        } else {
            "generated"
        },
        p.state_dir.join("admin-token").display(),
        keyring_file.display(),
    );
    let worker = worker_for(&p, &args.worker, metrics.clone());
    let (stop_tx, stop_rx) = crate::runtime::worker::shutdown_channel();
    // Stopping the worker also gives its budget leases back (`WorkerProcess::run`).
    let worker_task = tokio::spawn(worker.run(stop_rx.clone()));
    let stop_rx_channels = stop_rx.clone();
    // Without a cluster the projection goes to files (the operator's file sink).
    let has_kubeconfig = std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("HOME")
            .is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists());
    let manifests = p.state_dir.join("manifests");
    if !has_kubeconfig {
        tokio::spawn(crate::k8s::sink::run_file_sink(
            p.control.clone(),
            p.control.db().pool_for_health().clone(),
            manifests.clone(),
            "awooop".into(),
            std::time::Duration::from_secs(60),
            stop_rx,
        ));
        eprintln!(
            "  manifests: {} (no kubeconfig: file sink)",
            manifests.display()
        );
    }
    let mcp =
        http::mcp::McpState::new(gateway.clone(), p.control.db().clone(), args.max_body_bytes)
            .with_allowed_origins(args.gateway.gateway_allowed_origins.clone());
    eprintln!(
        "  MCP gateway: http://{}/mcp (bearer: `awooop token mint --project P --agent A`; key file {})",
        args.listen,
        p.state_dir.join("gateway-key").display()
    );
    let hub = channel_hub(&p, &args.channels, &metrics);
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
    let delivery = tokio::spawn(
        crate::channels::delivery::DeliveryWorker::new(hub.clone(), Default::default())
            .run(stop_rx_channels),
    );
    eprintln!(
        "  channel webhooks: http://{}/v1/webhooks/<project>/<channel>",
        args.listen
    );
    let router = http::app(state)
        .merge(http::mcp::router(mcp))
        .merge(crate::channels::routes(hub));
    http::serve_on(listener, router, shutdown_signal()).await?;
    // The API has stopped taking requests; let the worker finish or release its runs.
    let _ = stop_tx.send(true);
    let _ = worker_task.await;
    let _ = delivery.await;
    // Every queued call-audit row is written before exit.
    gateway.audit().flush().await;
    drop(p);
    Ok(())
}
