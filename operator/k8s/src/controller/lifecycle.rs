//! The controller's lifecycle (`awooop operator` in a cluster, under the leader lease): start
//! the watched caches, LISTEN for activations, resync once the caches are filled and then every
//! `resync_every`, reconcile each triggered project from memory, retry failures with backoff,
//! and stop when `shutdown` fires.
//!
//! Triggers: LISTEN `awooop_activation` (the control plane notifies on every activation),
//! watch events of projected objects and of labelled Secrets ([`super::cache`]), and the
//! periodic full resync, so a missed notification only delays. Reconciles run one at a time,
//! so two never race on the same objects; triggers that queued up meanwhile are coalesced to
//! one reconcile per project.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::cache::{Caches, Trigger};
use super::error::{Policy, ReconcileError, backoff};
use super::{Context, Outcome, events, reconcile_cached, resync_from};
use awooop_store::tenancy::ProjectId;

/// Run the controller until `shutdown` fires.
pub async fn run(
    ctx: Arc<Context>,
    resync_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = ctx.control.db().pool_for_health().clone();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(awooop_control::ACTIVATION_CHANNEL).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(ProjectId, Trigger)>();
    let caches = Caches::start(ctx.client.clone(), &ctx.namespace, tx.clone());
    tokio::select! {
        r = caches.ready() => r.map_err(|e| anyhow::anyhow!("the controller's caches stopped before they were filled: {e}"))?,
        _ = shutdown.changed() => return Ok(()),
    }
    tracing::info!("controller caches filled");
    let mut failures: HashMap<ProjectId, u32> = HashMap::new();
    // The first tick fires at once: the start-up resync.
    let mut tick = tokio::time::interval(resync_every);
    loop {
        let target = tokio::select! {
            _ = tick.tick() => None,
            n = listener.try_recv() => match n {
                // The connection was lost and is listening again (sqlx reconnects): notices
                // sent in the gap are gone, so resync now rather than at the next tick.
                Ok(None) => {
                    tracing::warn!("activation listener reconnected; resyncing");
                    None
                }
                Ok(Some(n)) => {
                    let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap_or_default();
                    match v["project_id"].as_str().map(ProjectId::parse) {
                        Some(Ok(p)) => Some((p, Trigger::Activation)),
                        _ => continue,
                    }
                }
                Err(e) => {
                    // sqlx reconnects on the next receive, silently; resync at once to
                    // cover what was missed rather than at the next tick.
                    tracing::warn!(error = %e, "activation listener failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tick.reset_immediately();
                    continue;
                }
            },
            Some(t) = rx.recv() => Some(t),
            _ = shutdown.changed() => return Ok(()),
        };
        let results: Vec<(ProjectId, Result<Outcome, ReconcileError>)> = match target {
            Some((p, why)) => {
                // Coalesce triggers that queued up meanwhile: one reconcile per project.
                let mut batch = BTreeMap::from([(p, why)]);
                while let Ok((more, why)) = rx.try_recv() {
                    batch.entry(more).or_insert(why);
                }
                let mut out = Vec::with_capacity(batch.len());
                for (p, why) in batch {
                    tracing::debug!(project = %p, trigger = why.as_str(), "reconcile");
                    let r = reconcile_cached(&ctx, &caches, &p).await;
                    out.push((p, r));
                }
                out
            }
            None => match resync_from(&ctx, Some(&caches)).await {
                Ok(r) => {
                    tracing::debug!(
                        projects = r.projects,
                        applied = r.outcome.applied,
                        "resync done"
                    );
                    r.failed.into_iter().map(|(p, e)| (p, Err(e))).collect()
                }
                Err(e) => {
                    tracing::warn!(error = e.label(), "resync failed: {e}");
                    vec![]
                }
            },
        };
        for (p, r) in results {
            match r {
                Ok(_) => {
                    failures.remove(&p);
                }
                Err(e) => {
                    events::reconcile_failed(&ctx, &p, &e).await;
                    if e.policy() == Policy::Retry {
                        let n = failures.entry(p.clone()).or_insert(0);
                        let delay = backoff(*n);
                        *n += 1;
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send((p, Trigger::Retry));
                        });
                    }
                }
            }
        }
    }
}
