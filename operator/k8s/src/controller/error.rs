//! The controller's error type and error policy: each variant has a stable [`ReconcileError::label`]
//! (metrics `error` label, Event notes, logs) and a [`Policy`]: an invalid revision waits for a
//! change, everything else retries with exponential backoff.

use std::time::Duration;

use awooop_core::backoff::Backoff;

/// Failures of one reconcile. Messages name what failed, never a Secret value.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to read project {project} from PostgreSQL ({code})")]
    Database {
        project: String,
        code: &'static str,
        #[source]
        source: awooop_core::error::Error,
    },
    #[error(
        "the active {kind} revision of project {project} is invalid ({code}); waiting for a new activation"
    )]
    InvalidRevision {
        project: String,
        kind: &'static str,
        code: &'static str,
    },
    #[error("failed to {verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write the drift audit record of project {project} ({code})")]
    Audit { project: String, code: &'static str },
}

/// What the error policy does with a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Retry with exponential backoff.
    Retry,
    /// Nothing will change by retrying: wait for the next activation (or resync).
    WaitForChange,
}

impl ReconcileError {
    /// Stable label of the variant (metrics `error` label, Event reason suffix, logs).
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Database { .. } => "database",
            ReconcileError::InvalidRevision { .. } => "invalid_revision",
            ReconcileError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.is_conflict() => "kube_conflict",
                kube::Error::Api(s) if s.is_forbidden() => "kube_forbidden",
                kube::Error::Api(_) => "kube_api",
                _ => "kube_transport",
            },
            ReconcileError::Audit { .. } => "audit",
        }
    }

    pub fn policy(&self) -> Policy {
        match self {
            ReconcileError::InvalidRevision { .. } => Policy::WaitForChange,
            _ => Policy::Retry,
        }
    }
}

/// Retry backoff of a failed reconcile: ceilings 1 s, 2 s, 4 s … 256 s (the bounds the
/// controller always had: `2ⁿ` seconds, doubling stops after the 8th failure), on the one
/// backoff implementation. Its jitter matters here: an API-server outage fails every
/// project's reconcile at once, and without it they would all come back in the same second.
pub const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(256));

/// Delay before retrying after the n-th consecutive failure (0 = the first): drawn from
/// `[RETRY.ceiling(n) / 2, RETRY.ceiling(n)]`.
pub fn backoff(failures: u32) -> Duration {
    RETRY.delay(failures)
}

pub(crate) fn kube_err(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let name = name.to_string();
    move |source| ReconcileError::Kube {
        verb,
        kind,
        name,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_keeps_the_old_bounds_with_jitter() {
        // The ceilings are the delays the controller used before it took the shared backoff.
        let ceilings: Vec<u64> = (0..12).map(|n| RETRY.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256, 256]);
        assert_eq!(RETRY.ceiling(u32::MAX), Duration::from_secs(256));
        for n in [0, 3, 8, 30] {
            let c = RETRY.ceiling(n);
            let draws: std::collections::HashSet<Duration> = (0..64).map(|_| backoff(n)).collect();
            assert!(
                draws.iter().all(|d| *d >= c / 2 && *d <= c),
                "failure {n}: {draws:?} outside [{:?}, {c:?}]",
                c / 2
            );
            // Projects that failed together (an API-server outage) do not retry in lockstep.
            assert!(draws.len() > 1, "failure {n}: no jitter: {draws:?}");
        }
    }
}
