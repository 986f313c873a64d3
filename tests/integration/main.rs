//! Integration tests against the real PostgreSQL and Redis (see tests/README.md).
//! One binary, many modules: linking is the slow part of a Rust test build here.

mod support;

mod mcp_support;

mod kube_env;

mod adversarial;
mod adversarial_b;
mod apiserver;
mod approvals;
mod channels;
mod cli_e2e;
mod client;
mod console;
mod contracts_golden;
mod control_plane;
mod crds;
mod ewoooc;
mod ewoooc_isolation;
mod first_hour;
mod gateway;
mod http_api;
mod local_postgres;
mod mcp_upstream;
mod model;
mod operator;
mod pg_connections;
mod redis_coordination;
mod run_events_feed;
mod runtime;
mod runtime_batches;
mod runtime_faults;
mod tenancy_rls;
