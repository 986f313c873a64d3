//! Kubernetes: the custom resource types the operator projects, the pure build/plan/status
//! steps, the in-cluster projection controller, its leader election, the watched Secret cache
//! for the gateway, and the file sink.
//!
//! The controller's reconcile reads like its summary (see [`controller`]): fetch (PostgreSQL
//! and the cluster) → build ([`project`], [`workers`], pure) → plan ([`plan`], pure) → apply
//! (server-side apply with one field manager) → status ([`status`], pure, written only when it
//! changed).

pub mod controller;
pub mod crd;
pub mod lease;
pub mod plan;
pub mod project;
pub mod secrets;
pub mod sink;
pub mod status;
pub mod workers;

/// Why an object is (re)applied. Drift and Recreate mean someone changed or deleted a projected
/// object in the cluster: PostgreSQL wins, and an Event and an audit row record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Create,
    Update,
    Drift,
    Recreate,
}

impl Why {
    pub fn is_drift(self) -> bool {
        matches!(self, Why::Drift | Why::Recreate)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Why::Create => "create",
            Why::Update => "update",
            Why::Drift => "modified",
            Why::Recreate => "deleted",
        }
    }
}
