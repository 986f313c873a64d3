//! Following [`crate::ACTIVATION_CHANNEL`] for a cache of a project's control-plane facts (the
//! gateway's snapshots, the channel hub's channels and run bases).
//!
//! A notification sent while nobody listens is lost, so a cache may trust it only while the
//! listener is listening. [`follow`] therefore says [`Invalidation::All`] at the end of every
//! gap: once `LISTEN` is in place after a (re)connection, after every failed attempt to
//! connect, and when the connection is lost. sqlx's `PgListener::recv` reconnects on its own and
//! says nothing, which left whatever a cache had loaded before the loss in use until its TTL;
//! the process's shared listener ([`awooop_store::listen`]) reports every loss
//! ([`Signal::Lost`]) and every return ([`Signal::Listening`]), and those are the moments to
//! drop everything. With that, a cache's TTL only bounds staleness when the listener's
//! connection hangs without failing.

use serde_json::Value;

use awooop_store::listen::Signal;
use awooop_store::tenancy::{Db, ProjectId};

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

/// Listen on [`crate::ACTIVATION_CHANNEL`] (through the process's shared listener of `db`,
/// [`awooop_store::listen`]) and hand every invalidation to `apply` until it returns `false`
/// (its cache is gone). The listener reconnects for ever and reports every gap; see the
/// module's comment for when this says [`Invalidation::All`].
pub fn follow(
    db: &Db,
    mut apply: impl FnMut(Invalidation) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut sub = db.listener().subscribe(crate::ACTIVATION_CHANNEL);
    tokio::spawn(async move {
        while let Some(signal) = sub.recv().await {
            let invalidation = match signal {
                // Listening from here on: what was loaded before may have missed a notice.
                Signal::Listening => Invalidation::All,
                // Not listening: nothing cached can be trusted beyond this moment.
                Signal::Lost => Invalidation::All,
                Signal::Notice(payload) => Invalidation::from_payload(&payload),
            };
            if !apply(invalidation) {
                return;
            }
        }
    })
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
