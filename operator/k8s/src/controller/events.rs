//! Kubernetes Events (`events.k8s.io/v1`) about restored drift and failed reconciles. Best
//! effort: an Event that cannot be written must not undo a restore. Notes name objects and
//! stable error labels, never a Secret value.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, ObjectMeta, PostParams};

use super::error::ReconcileError;
use super::metrics::KindLabel;
use super::{Context, REPORTER};
use crate::Why;
use awooop_store::tenancy::ProjectId;

/// Longest Event name: a DNS subdomain (253).
const MAX_NAME: usize = 253;

/// The Event's name: `<regarding>.<nanoseconds, hex>`, as client-go's recorder names them.
///
/// An explicit name, not `generateName`: the API server validates a `generateName` as a name
/// prefix that must itself be a valid name, so the old `"<name>."` (ending in a dot) was
/// refused for every Event. The regarding object's name is a valid DNS subdomain; it is cut
/// (at an alphanumeric character) so that the suffix fits.
pub fn event_name(regarding: &str, at: Timestamp) -> String {
    let suffix = format!("{:x}", at.as_nanosecond().max(0));
    let room = MAX_NAME - suffix.len() - 1;
    let mut base: String = regarding.chars().take(room).collect();
    while base.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        base.pop();
    }
    if base.is_empty() {
        base.push_str("awooop");
    }
    format!("{base}.{suffix}")
}

pub(crate) fn object_ref<K: Resource<DynamicType = ()>>(o: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: o.meta().name.clone(),
        namespace: o.meta().namespace.clone(),
        uid: o.meta().uid.clone(),
        ..Default::default()
    }
}

/// Publish an Event (best effort).
pub async fn publish(
    ctx: &Context,
    regarding: ObjectReference,
    type_: &str,
    reason: &str,
    action: &str,
    note: String,
) {
    let now = Timestamp::now();
    let name = event_name(regarding.name.as_deref().unwrap_or("awooop"), now);
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(ctx.identity.clone()),
        action: Some(action.into()),
        reason: Some(reason.into()),
        type_: Some(type_.into()),
        note: Some(note),
        regarding: Some(regarding),
        ..Default::default()
    };
    let api = Api::<Event>::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, reason, "failed to publish Event");
    }
}

/// `DriftRestored` on the restored object, and the drift metric.
pub async fn drift<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, why: Why) {
    ctx.metrics
        .drift
        .get_or_create(&KindLabel {
            kind: K::kind(&()).into_owned(),
        })
        .inc();
    let note = format!(
        "{} {} was {} in the cluster; restored from PostgreSQL (the source of truth)",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or_default(),
        why.as_str()
    );
    publish(
        ctx,
        object_ref(obj),
        "Warning",
        "DriftRestored",
        "Restore",
        note,
    )
    .await;
}

/// Record a failed reconcile as an Event on the project's AgentProject (reason
/// `ReconcileFailed`, note with the stable label) and log it.
pub async fn reconcile_failed(ctx: &Context, id: &ProjectId, e: &ReconcileError) {
    tracing::warn!(project = %id, error = e.label(), "reconcile failed: {e}");
    let regarding = ObjectReference {
        api_version: Some("awooop.dev/v1alpha1".into()),
        kind: Some("AgentProject".into()),
        name: Some(id.to_string()),
        namespace: Some(ctx.namespace.clone()),
        ..Default::default()
    };
    publish(
        ctx,
        regarding,
        "Warning",
        "ReconcileFailed",
        "Reconcile",
        format!("reconcile failed: {}", e.label()),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DNS-1123 subdomain, as the API server validates `metadata.name`.
    fn valid_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn event_names_are_valid_subdomains() {
        let at = Timestamp::from_second(1_764_000_000).unwrap();
        // Longest valid names: cut at any position, including just after a dot or a dash.
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        let dashed = format!("{}.{}-{}", "a".repeat(63), "b".repeat(63), "c".repeat(100));
        for regarding in [
            "alpha",
            "alpha.triage",
            "awooop-worker-alpha",
            long.as_str(),
            &long[..235],
            &long[..236],
            &long[..237],
            &dashed[..63 + 1 + 63 + 1],
            "",
        ] {
            let n = event_name(regarding, at);
            assert!(valid_subdomain(&n), "{regarding:?} gave {n:?}");
            assert!(!n.ends_with('.'), "{n}");
        }
        assert_eq!(
            event_name("alpha", at),
            format!("alpha.{:x}", at.as_nanosecond())
        );
    }
}
