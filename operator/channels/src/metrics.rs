//! Metrics of the channel hub, encoded into the platform's `/metrics` (see
//! [`ChannelMetrics::encode`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabel {
    pub provider: String,
    /// accepted, duplicate, ignored, rejected
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub provider: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

pub struct ChannelMetrics {
    registry: Registry,
    pub inbound: Family<InboundLabel, Counter>,
    pub verification_failures: Family<CodeLabel, Counter>,
    /// Refusals not written to the audit log (beyond one row per channel and code per window).
    pub refusals_unaudited: Family<CodeLabel, Counter>,
    pub delivery_seconds: Family<ProviderLabel, Histogram>,
    pub delivery_retries: Family<ProviderLabel, Counter>,
    pub delivery_failures: Family<CodeLabel, Counter>,
    /// Pending outbound messages (refreshed by the delivery worker at each poll).
    pub queue_depth: Gauge,
}

impl Default for ChannelMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("awooop_channel");
        let inbound = Family::<InboundLabel, Counter>::default();
        let verification_failures = Family::<CodeLabel, Counter>::default();
        let refusals_unaudited = Family::<CodeLabel, Counter>::default();
        let delivery_seconds = Family::<ProviderLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 15))) as fn() -> Histogram,
        );
        let delivery_retries = Family::<ProviderLabel, Counter>::default();
        let delivery_failures = Family::<CodeLabel, Counter>::default();
        let queue_depth = Gauge::default();
        registry.register(
            "inbound_events",
            "Inbound channel events by result",
            inbound.clone(),
        );
        registry.register(
            "verification_failures",
            "Webhooks refused before parsing, by code",
            verification_failures.clone(),
        );
        registry.register(
            "refusals_unaudited",
            "Refused webhooks counted but not written to the audit log (rate limit per channel and code)",
            refusals_unaudited.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Latency of one provider send",
            delivery_seconds.clone(),
        );
        registry.register(
            "delivery_retries",
            "Sends retried (429, 5xx, network)",
            delivery_retries.clone(),
        );
        registry.register(
            "delivery_failures",
            "Messages given up, by code",
            delivery_failures.clone(),
        );
        registry.register(
            "outbound_queue_depth",
            "Pending outbound messages",
            queue_depth.clone(),
        );
        Self {
            registry,
            inbound,
            verification_failures,
            refusals_unaudited,
            delivery_seconds,
            delivery_retries,
            delivery_failures,
            queue_depth,
        }
    }

    pub fn inbound(&self, provider: &str, result: &str, n: u64) {
        if n > 0 {
            self.inbound
                .get_or_create(&InboundLabel {
                    provider: provider.into(),
                    result: result.into(),
                })
                .inc_by(n);
        }
    }

    pub fn refused(&self, provider: &str, code: &str) {
        self.verification_failures
            .get_or_create(&CodeLabel {
                provider: provider.into(),
                code: code.into(),
            })
            .inc();
    }

    pub fn unaudited(&self, provider: &str, code: &str) {
        self.refusals_unaudited
            .get_or_create(&CodeLabel {
                provider: provider.into(),
                code: code.into(),
            })
            .inc();
    }

    /// Encode (without the trailing `# EOF`) for the platform's `/metrics`.
    pub fn encode(&self, out: &mut String) {
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}
