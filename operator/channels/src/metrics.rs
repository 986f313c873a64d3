//! Metrics of the channel hub (`awooop_channel_*`), registered into the platform's one
//! registry (see [`ChannelMetrics::register`]).

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// channel (resolved channel: contract and verification secret) or basis (run basis)
    pub cache: String,
}

pub struct ChannelMetrics {
    pub inbound: Family<InboundLabel, Counter>,
    pub verification_failures: Family<CodeLabel, Counter>,
    /// Refusals not written to the audit log (beyond one row per channel and code per window).
    pub refusals_unaudited: Family<CodeLabel, Counter>,
    pub delivery_seconds: Family<ProviderLabel, Histogram>,
    pub delivery_retries: Family<ProviderLabel, Counter>,
    pub delivery_failures: Family<CodeLabel, Counter>,
    /// Pending outbound messages (refreshed by the delivery worker at each poll).
    pub queue_depth: Gauge,
    /// Loads of the hub's caches (single flight: at most one per key at a time).
    pub cache_loads: Family<CacheLabel, Counter>,
}

impl Default for ChannelMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelMetrics {
    pub fn new() -> Self {
        Self {
            inbound: Family::default(),
            verification_failures: Family::default(),
            refusals_unaudited: Family::default(),
            delivery_seconds: Family::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.001, 2.0, 15))) as fn() -> Histogram,
            ),
            delivery_retries: Family::default(),
            delivery_failures: Family::default(),
            queue_depth: Gauge::default(),
            cache_loads: Family::default(),
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

    pub fn cache_load(&self, cache: &str) {
        self.cache_loads
            .get_or_create(&CacheLabel {
                cache: cache.into(),
            })
            .inc();
    }

    /// Loads of one cache so far (tests).
    pub fn cache_loads(&self, cache: &str) -> u64 {
        self.cache_loads
            .get_or_create(&CacheLabel {
                cache: cache.into(),
            })
            .get()
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

    /// Register the hub's families into a registry: the platform's, through
    /// `Metrics::register_part("channel", …)` (names `awooop_channel_*`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "inbound_events",
            "Inbound channel events by result",
            self.inbound.clone(),
        );
        r.register(
            "verification_failures",
            "Webhooks refused before parsing, by code",
            self.verification_failures.clone(),
        );
        r.register(
            "refusals_unaudited",
            "Refused webhooks counted but not written to the audit log (rate limit per channel and code)",
            self.refusals_unaudited.clone(),
        );
        r.register(
            "delivery_duration_seconds",
            "Latency of one provider send",
            self.delivery_seconds.clone(),
        );
        r.register(
            "delivery_retries",
            "Sends retried (429, 5xx, network)",
            self.delivery_retries.clone(),
        );
        r.register(
            "delivery_failures",
            "Messages given up, by code",
            self.delivery_failures.clone(),
        );
        r.register(
            "cache_loads",
            "Loads of the hub's resolved-channel and run-basis caches (one per key at a time)",
            self.cache_loads.clone(),
        );
        r.register(
            "outbound_queue_depth",
            "Pending outbound messages",
            self.queue_depth.clone(),
        );
    }
}
