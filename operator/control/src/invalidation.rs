//! Following [`crate::ACTIVATION_CHANNEL`] for a cache of a project's control-plane facts (the
//! gateway's snapshots, the channel hub's channels and run bases).
//!
//! A notification sent while nobody listens is lost, so a cache may trust it only while the
//! listener is listening. [`follow`] therefore says [`Invalidation::All`] at the end of every
//! gap: once `LISTEN` is in place after a (re)connection, after every failed attempt to
//! connect, and when the connection is lost. sqlx's `PgListener::recv` reconnects on its own and
//! says nothing, which left whatever a cache had loaded before the loss in use until its TTL;
//! `try_recv` reports the loss (after listening again, as `eager_reconnect` is on), and that is
//! the moment to drop everything. With that, a cache's TTL only bounds staleness when the
//! listener's connection hangs without failing.

use std::time::Duration;

use serde_json::Value;

use awooop_store::tenancy::ProjectId;

/// What a cache following activations must drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A notification named this project.
    Project(ProjectId),
    /// Notifications may have been missed (or one named no readable project): drop everything.
    All,
}

impl Invalidation {
    /// From a notification's payload: its `project_id`, or [`Invalidation::All`] when there is
    /// none to read (fail closed: a payload we cannot read drops more, never less).
    pub fn from_payload(payload: &str) -> Self {
        serde_json::from_str::<Value>(payload)
            .ok()
            .and_then(|v| v["project_id"].as_str().map(ProjectId::parse))
            .and_then(|p| p.ok())
            .map_or(Self::All, Self::Project)
    }
}

/// How long to wait before connecting again after a failed attempt.
const RETRY: Duration = Duration::from_secs(1);

/// Listen on [`crate::ACTIVATION_CHANNEL`] and hand every invalidation to `apply` until it
/// returns `false` (its cache is gone). Reconnects for ever; see the module's comment for when
/// it says [`Invalidation::All`].
pub fn follow(
    pool: sqlx::PgPool,
    mut apply: impl FnMut(Invalidation) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut listener = match listen(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    // Not listening: nothing cached can be trusted beyond this moment.
                    tracing::warn!(error = %e, "activation listener: cannot listen; retrying");
                    if !apply(Invalidation::All) {
                        return;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            // Listening from here on: what was loaded before may have missed a notification.
            if !apply(Invalidation::All) {
                return;
            }
            loop {
                let invalidation = match listener.try_recv().await {
                    Ok(Some(n)) => Invalidation::from_payload(n.payload()),
                    // Lost and listening again (eager reconnect): the gap may have lost some.
                    Ok(None) => Invalidation::All,
                    Err(e) => {
                        tracing::warn!(error = %e, "activation listener: connection failed");
                        break;
                    }
                };
                if !apply(invalidation) {
                    return;
                }
            }
            if !apply(Invalidation::All) {
                return;
            }
        }
    })
}

async fn listen(pool: &sqlx::PgPool) -> sqlx::Result<sqlx::postgres::PgListener> {
    let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
    l.listen(crate::ACTIVATION_CHANNEL).await?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_project_or_drops_everything() {
        assert_eq!(
            Invalidation::from_payload(r#"{"project_id":"alpha","kind":"agent"}"#),
            Invalidation::Project(ProjectId::parse("alpha").unwrap())
        );
        for unreadable in [
            "",
            "not json",
            r#"{"kind":"agent"}"#,
            r#"{"project_id":"A B"}"#,
        ] {
            assert_eq!(
                Invalidation::from_payload(unreadable),
                Invalidation::All,
                "{unreadable:?}"
            );
        }
    }
}
