//! The platform's one Prometheus registry (OpenMetrics text at `/metrics`) and the runtime's
//! metrics in it.
//!
//! Other parts register their families into the same registry under their own prefix
//! ([`Metrics::register_part`]: the channel hub as `awooop_channel_*`, the Kubernetes
//! controller as `awooop_operator_*`), so a process has one registry and one exposition.
//!
//! Queue depth is read from PostgreSQL at scrape time (the queue lives there, not in a
//! process); the rest are counters and histograms updated by workers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectLabel {
    pub project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

pub struct Metrics {
    /// Behind a lock because parts register after construction (a hub or a controller is
    /// built after the metrics it reports into); held only to register and to encode.
    registry: std::sync::Mutex<Registry>,
    /// Time one claim statement takes.
    pub claim_seconds: Histogram,
    /// Enqueue (created_at) to execution start of first attempts.
    pub pickup_seconds: Histogram,
    /// Run start to finish, by final state.
    pub run_seconds: Family<StateLabel, Histogram>,
    /// State transitions made by workers, by target state.
    pub transitions: Family<StateLabel, Counter>,
    /// Reaper actions: requeued, failed, timed_out.
    pub reaper: Family<ActionLabel, Counter>,
    /// Runnable runs per project (refreshed at scrape).
    pub queue_depth: Family<ProjectLabel, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("awooop");
        let claim_seconds = latency_histogram();
        let pickup_seconds = latency_histogram();
        let run_seconds = Family::<StateLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let transitions = Family::<StateLabel, Counter>::default();
        let reaper = Family::<ActionLabel, Counter>::default();
        let queue_depth = Family::<ProjectLabel, Gauge>::default();
        registry.register(
            "claim_duration_seconds",
            "Duration of one claim statement",
            claim_seconds.clone(),
        );
        registry.register(
            "pickup_latency_seconds",
            "Enqueue to execution start",
            pickup_seconds.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Run start to finish by final state",
            run_seconds.clone(),
        );
        registry.register(
            "run_transitions",
            "Run state transitions made by workers",
            transitions.clone(),
        );
        registry.register(
            "reaper_actions",
            "Runs requeued, failed or timed out by the reaper",
            reaper.clone(),
        );
        registry.register(
            "queue_depth",
            "Runnable runs per project",
            queue_depth.clone(),
        );
        Arc::new(Self {
            registry: std::sync::Mutex::new(registry),
            claim_seconds,
            pickup_seconds,
            run_seconds,
            transitions,
            reaper,
            queue_depth,
        })
    }

    /// Register another part's metrics in this registry under `awooop_<prefix>_…` (`f` gets
    /// the sub-registry). Register each part once per process: a second registration of the
    /// same names would encode every family twice.
    pub fn register_part(&self, prefix: &str, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().expect("metrics lock");
        f(registry.sub_registry_with_prefix(prefix));
    }

    pub fn transition(&self, state: &str) {
        self.transitions
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .inc();
    }

    pub fn finished(&self, state: &str, took: Duration) {
        self.transition(state);
        self.run_seconds
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn reaped(&self, action: &str, n: u64) {
        if n > 0 {
            self.reaper
                .get_or_create(&ActionLabel {
                    action: action.into(),
                })
                .inc_by(n);
        }
    }

    /// Refresh the queue depth from PostgreSQL (worker scope sees every project's runs) and
    /// encode everything.
    pub async fn render(&self, pool: &PgPool) -> String {
        if let Ok(mut tx) = crate::repo::worker_tx(pool).await {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT project_id, count(*) FROM runs WHERE state IN ('queued', 'retrying') GROUP BY project_id",
            )
            .fetch_all(&mut *tx)
            .await
            .unwrap_or_default();
            let _ = tx.commit().await;
            self.queue_depth.clear();
            for (project, n) in rows {
                self.queue_depth
                    .get_or_create(&ProjectLabel { project })
                    .set(n);
            }
        }
        self.encode()
    }

    /// Encode everything as it stands, without reading PostgreSQL: the queue depth keeps its
    /// last refresh (none in a process that never calls [`Metrics::render`], such as the
    /// operator, whose metrics port is not behind the admin token and must not carry project
    /// labels).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding to a String cannot fail");
        out
    }
}
