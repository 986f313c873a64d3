//! Metrics of the controller (`awooop_operator_*`): reconciliations by result, errors by stable
//! label, drift restored by kind, reconcile duration, Secret-triggered reconciles.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    registry: Registry,
    pub reconciliations: Family<ResultLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub drift: Family<KindLabel, Counter>,
    pub duration: Histogram,
}

impl ControllerMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("awooop_operator");
        let reconciliations = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let drift = Family::<KindLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
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
        Arc::new(Self {
            registry,
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}
