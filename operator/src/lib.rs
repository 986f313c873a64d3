//! AwoooP: a multi-tenant agent platform.
//!
//! The crate is organised by the platform's parts (see docs/architecture.md):
//! [`contracts`] (the six contract types, schemas, hashing, signing), [`control`] (the
//! contract lifecycle service), [`tenancy`] (tenant context and the only database entry
//! points), [`auth`], [`audit`], [`coord`] (optional Redis), [`db`] (pools, migrations,
//! embedded PostgreSQL), [`http`] (axum API), [`cli`] and [`bench`].

pub mod audit;
pub mod auth;
pub mod bench;
pub mod channels;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod control;
pub mod coord;
pub mod db;
pub mod error;
pub mod gateway;
pub mod http;
pub mod k8s;
pub mod local;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod tenancy;
pub mod tls;
