//! Kubernetes: the custom resource types the operator projects (the controller itself is
//! planned, see docs/architecture.md).

pub mod crd;
pub mod project;
pub mod sink;
