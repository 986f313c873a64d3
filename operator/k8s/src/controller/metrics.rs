//! Metrics of the controller (`awooop_operator_*`): reconciliations by result, errors by stable
//! label, drift restored by kind, reconcile duration. They live in the platform's one registry
//! ([`awooop_runtime::metrics::Metrics`]), registered under the prefix `operator`, so the
//! operator's `/metrics` is the same exposition as every other process's.

use std::sync::Arc;

use awooop_runtime::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Metrics of the controller: reconciliations by result, errors by stable label, drift
/// restored by kind, reconcile duration.
pub struct ControllerMetrics {
    /// The registry these are registered in; [`ControllerMetrics::render`] encodes all of it.
    platform: Arc<Metrics>,
    pub reconciliations: Family<ResultLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub drift: Family<KindLabel, Counter>,
    pub duration: Histogram,
}

impl ControllerMetrics {
    /// Create the controller's families and register them in `platform` (once per process).
    pub fn new(platform: &Arc<Metrics>) -> Arc<Self> {
        let reconciliations = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let drift = Family::<KindLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        platform.register_part("operator", |registry| {
            registry.register(
                "reconciliations",
                "Project reconciliations by result",
                reconciliations.clone(),
            );
            registry.register(
                "reconcile_errors",
                "Failed reconciliations by stable error label",
                errors.clone(),
            );
            registry.register(
                "drift_restored",
                "Projected objects restored after someone changed or deleted them",
                drift.clone(),
            );
            registry.register(
                "reconcile_duration_seconds",
                "Duration of one project reconcile",
                duration.clone(),
            );
        });
        Arc::new(Self {
            platform: platform.clone(),
            reconciliations,
            errors,
            drift,
            duration,
        })
    }

    pub(crate) fn result(&self, r: &str) {
        self.reconciliations
            .get_or_create(&ResultLabel { result: r.into() })
            .inc();
    }

    /// The platform registry's exposition (these families and every other part's), without
    /// reading PostgreSQL (see [`Metrics::encode`]).
    pub fn render(&self) -> String {
        self.platform.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_series_are_in_the_platform_exposition() {
        let platform = Metrics::new();
        let m = ControllerMetrics::new(&platform);
        m.result("applied");
        m.errors
            .get_or_create(&ErrorLabel {
                error: "kube_conflict".into(),
            })
            .inc();
        m.drift
            .get_or_create(&KindLabel {
                kind: "AgentProject".into(),
            })
            .inc();
        m.duration.observe(0.002);
        // Read through the platform registry, not through the controller.
        let out = platform.encode();
        for line in [
            "awooop_operator_reconciliations_total{result=\"applied\"} 1",
            "awooop_operator_reconcile_errors_total{error=\"kube_conflict\"} 1",
            "awooop_operator_drift_restored_total{kind=\"AgentProject\"} 1",
            "awooop_operator_reconcile_duration_seconds_count 1",
            // The runtime's own families, in the same exposition.
            "# TYPE awooop_claim_duration_seconds histogram",
        ] {
            assert!(out.contains(line), "missing {line:?} in:\n{out}");
        }
        // One exposition: one terminating EOF.
        assert_eq!(out.matches("# EOF").count(), 1, "{out}");
        assert_eq!(m.render(), out);
    }
}
