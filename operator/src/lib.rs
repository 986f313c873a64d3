//! AwoooP: a multi-tenant agent platform.
//!
//! This is the `awooop` binary's crate: arguments ([`config`]), the composition root
//! ([`platform`]), one module per command ([`cli`]), the in-cluster operator process ([`in_cluster`]) and, with the `bench`
//! feature, the benchmarks ([`bench`]). The platform's parts are crates under `operator/`
//! (see docs/architecture.md); they are re-exported here under their old module names so
//! that `awooop::gateway::…` and friends keep working for tests and tools.

pub use awooop_channels as channels;
pub use awooop_contracts as contracts;
pub use awooop_control as control;
pub use awooop_core::{error, tls};
pub use awooop_gateway as gateway;
pub use awooop_http as http;
pub use awooop_k8s as k8s;
pub use awooop_model as model;
pub use awooop_policy as policy;
pub use awooop_runtime as runtime;
pub use awooop_runtime::metrics;
pub use awooop_store::{audit, auth, coord, db, listen, local, notify, tenancy};

pub mod apply;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod example;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod in_cluster;
pub mod log_writer;
pub mod master_secrets;
pub mod platform;
