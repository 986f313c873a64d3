//! The controller's error type and error policy: each variant has a stable [`ReconcileError::label`]
//! (metrics `error` label, Event notes, logs) and a [`Policy`]: an invalid revision waits for a
//! change, everything else retries with exponential backoff.

use std::time::Duration;

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

/// Backoff of the n-th consecutive failure: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
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
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(256));
        assert!(backoff(30) <= Duration::from_secs(300));
    }
}
