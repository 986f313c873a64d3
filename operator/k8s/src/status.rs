//! Status of projected objects (pure): one vocabulary of condition types and reasons, the
//! `meta.SetStatusCondition` rule (keep `lastTransitionTime` while a condition's status does
//! not change), `observedGeneration`, and the comparison that lets the controller skip a status
//! write when nothing but timestamps would change.
//!
//! Messages name missing Secret references (name and key), never a value.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{AgentProjectStatus, McpGrantStatus, SecretKeyRef};

pub const READY: &str = "Ready";
pub const PROJECTED: &str = "Projected";
pub const SECRETS_RESOLVED: &str = "SecretsResolved";
pub const WORKERS_READY: &str = "WorkersReady";

/// Every reason a condition can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The active revision is applied.
    RevisionApplied,
    /// Every credential reference names a Secret and key that exist for the project.
    SecretsFound,
    /// At least one reference is missing (or its Secret is not labelled for the project).
    SecretsMissing,
    /// The worker Deployment has its desired replicas ready.
    WorkersAvailable,
    /// Fewer replicas are ready than desired.
    WorkersUnavailable,
    /// No worker image is configured: this operator does not run workers.
    WorkersNotManaged,
    /// All other conditions hold.
    AllConditionsMet,
    /// Some other condition does not hold.
    ConditionsNotMet,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RevisionApplied => "RevisionApplied",
            Reason::SecretsFound => "SecretsFound",
            Reason::SecretsMissing => "SecretsMissing",
            Reason::WorkersAvailable => "WorkersAvailable",
            Reason::WorkersUnavailable => "WorkersUnavailable",
            Reason::WorkersNotManaged => "WorkersNotManaged",
            Reason::AllConditionsMet => "AllConditionsMet",
            Reason::ConditionsNotMet => "ConditionsNotMet",
        }
    }
}

/// Tri-state status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// Build a condition, keeping the previous `lastTransitionTime` when the status is unchanged.
pub fn condition(
    type_: &str,
    truth: Truth,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == truth.as_str())
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: truth.as_str().to_string(),
        reason: reason.as_str().to_string(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// What the worker side looks like for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkersObserved {
    NotManaged,
    Replicas { desired: i32, ready: i32 },
}

pub fn missing_message(missing: &[SecretKeyRef]) -> String {
    if missing.is_empty() {
        return "all credential references resolve".into();
    }
    let names: Vec<String> = missing
        .iter()
        .map(|r| format!("{}/{}", r.name, r.key))
        .collect();
    format!(
        "missing Secret key(s) (or Secret not labelled awooop.dev/project for this project): {}",
        names.join(", ")
    )
}

fn secrets_condition(
    missing: &[SecretKeyRef],
    generation: Option<i64>,
    prev: &[Condition],
    now: Timestamp,
) -> Condition {
    let (t, r) = if missing.is_empty() {
        (Truth::True, Reason::SecretsFound)
    } else {
        (Truth::False, Reason::SecretsMissing)
    };
    condition(
        SECRETS_RESOLVED,
        t,
        r,
        missing_message(missing),
        generation,
        prev,
        now,
    )
}

fn ready_condition(
    parts: &[&Condition],
    generation: Option<i64>,
    prev: &[Condition],
    now: Timestamp,
) -> Condition {
    let failing: Vec<&str> = parts
        .iter()
        .filter(|c| c.status == "False")
        .map(|c| c.type_.as_str())
        .collect();
    if failing.is_empty() {
        condition(
            READY,
            Truth::True,
            Reason::AllConditionsMet,
            "projected and ready".into(),
            generation,
            prev,
            now,
        )
    } else {
        condition(
            READY,
            Truth::False,
            Reason::ConditionsNotMet,
            format!("not ready: {}", failing.join(", ")),
            generation,
            prev,
            now,
        )
    }
}

/// Status of an AgentProject after its objects were applied.
pub fn agent_project_status(
    generation: Option<i64>,
    revision_id: &str,
    body_hash: &str,
    missing: &[SecretKeyRef],
    workers: WorkersObserved,
    previous: Option<&AgentProjectStatus>,
    now: Timestamp,
) -> AgentProjectStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let projected = condition(
        PROJECTED,
        Truth::True,
        Reason::RevisionApplied,
        format!("revision {revision_id} applied"),
        generation,
        prev,
        now,
    );
    let secrets = secrets_condition(missing, generation, prev, now);
    let (workers_cond, replicas) = match workers {
        WorkersObserved::NotManaged => (
            condition(
                WORKERS_READY,
                Truth::Unknown,
                Reason::WorkersNotManaged,
                "no worker image configured (AWOOOP_WORKER_IMAGE)".into(),
                generation,
                prev,
                now,
            ),
            None,
        ),
        WorkersObserved::Replicas { desired, ready } => {
            let (t, r) = if ready >= desired {
                (Truth::True, Reason::WorkersAvailable)
            } else {
                (Truth::False, Reason::WorkersUnavailable)
            };
            (
                condition(
                    WORKERS_READY,
                    t,
                    r,
                    format!("{ready}/{desired} worker replicas ready"),
                    generation,
                    prev,
                    now,
                ),
                Some(desired),
            )
        }
    };
    let ready = ready_condition(
        &[&projected, &secrets, &workers_cond],
        generation,
        prev,
        now,
    );
    AgentProjectStatus {
        conditions: vec![ready, projected, secrets, workers_cond],
        observed_generation: generation,
        projected_revision_id: Some(revision_id.to_string()),
        hash_prefix: Some(hash_prefix(body_hash)),
        worker_replicas: replicas,
    }
}

/// Status of an McpGrant after it was applied.
pub fn grant_status(
    generation: Option<i64>,
    body_hash: &str,
    missing: &[SecretKeyRef],
    previous: Option<&McpGrantStatus>,
    now: Timestamp,
) -> McpGrantStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let secrets = secrets_condition(missing, generation, prev, now);
    let ready = ready_condition(&[&secrets], generation, prev, now);
    McpGrantStatus {
        conditions: vec![ready, secrets],
        observed_generation: generation,
        hash_prefix: Some(hash_prefix(body_hash)),
        missing_secret_refs: missing.to_vec(),
    }
}

pub fn hash_prefix(body_hash: &str) -> String {
    body_hash
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// Equal except for condition timestamps: then the status write is skipped.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &[Condition]| -> Vec<(String, String, String, String, Option<i64>)> {
        c.iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect()
    };
    strip(a) == strip(b)
}

pub fn same_project_status(a: Option<&AgentProjectStatus>, b: &AgentProjectStatus) -> bool {
    a.is_some_and(|a| {
        same_conditions(&a.conditions, &b.conditions)
            && a.observed_generation == b.observed_generation
            && a.projected_revision_id == b.projected_revision_id
            && a.hash_prefix == b.hash_prefix
            && a.worker_replicas == b.worker_replicas
    })
}

pub fn same_grant_status(a: Option<&McpGrantStatus>, b: &McpGrantStatus) -> bool {
    a.is_some_and(|a| {
        same_conditions(&a.conditions, &b.conditions)
            && a.observed_generation == b.observed_generation
            && a.hash_prefix == b.hash_prefix
            && a.missing_secret_refs == b.missing_secret_refs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn get<'a>(s: &'a AgentProjectStatus, ty: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn conditions_reasons_and_ready_follow_the_parts() {
        let missing = vec![SecretKeyRef {
            name: "k8s-mcp".into(),
            key: "token".into(),
        }];
        for (missing, workers, ready, secrets_reason, workers_reason) in [
            (
                vec![],
                WorkersObserved::Replicas {
                    desired: 2,
                    ready: 2,
                },
                "True",
                "SecretsFound",
                "WorkersAvailable",
            ),
            (
                missing.clone(),
                WorkersObserved::Replicas {
                    desired: 1,
                    ready: 1,
                },
                "False",
                "SecretsMissing",
                "WorkersAvailable",
            ),
            (
                vec![],
                WorkersObserved::Replicas {
                    desired: 3,
                    ready: 1,
                },
                "False",
                "SecretsFound",
                "WorkersUnavailable",
            ),
            (
                vec![],
                WorkersObserved::NotManaged,
                "True",
                "SecretsFound",
                "WorkersNotManaged",
            ),
        ] {
            let s = agent_project_status(
                Some(4),
                "r1",
                "sha256:abcdef0123456789",
                &missing,
                workers,
                None,
                t(10),
            );
            assert_eq!(get(&s, READY).status, ready, "{workers:?}");
            assert_eq!(get(&s, SECRETS_RESOLVED).reason, secrets_reason);
            assert_eq!(get(&s, WORKERS_READY).reason, workers_reason);
            assert_eq!(get(&s, PROJECTED).observed_generation, Some(4));
            assert_eq!(s.hash_prefix.as_deref(), Some("abcdef012345"));
            if !missing.is_empty() {
                let m = &get(&s, SECRETS_RESOLVED).message;
                assert!(m.contains("k8s-mcp/token"), "{m}");
            }
        }
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_equal_statuses_skip_the_write() {
        let w = WorkersObserved::Replicas {
            desired: 1,
            ready: 1,
        };
        let first = agent_project_status(Some(1), "r1", "sha256:00", &[], w, None, t(10));
        let again = agent_project_status(Some(1), "r1", "sha256:00", &[], w, Some(&first), t(99));
        assert_eq!(
            get(&again, READY).last_transition_time,
            get(&first, READY).last_transition_time
        );
        assert!(same_project_status(Some(&first), &again));
        let down = WorkersObserved::Replicas {
            desired: 2,
            ready: 1,
        };
        let changed =
            agent_project_status(Some(1), "r1", "sha256:00", &[], down, Some(&first), t(99));
        assert_eq!(get(&changed, READY).last_transition_time, Time(t(99)));
        assert_eq!(
            get(&changed, PROJECTED).last_transition_time,
            Time(t(10)),
            "unchanged conditions keep their time"
        );
        assert!(!same_project_status(Some(&first), &changed));
        assert!(!same_project_status(None, &first));
    }
}
