//! Persistence of AwoooP: PostgreSQL pools and migrations ([`db`]), the tenant context and
//! the only database entry points ([`tenancy`]), the audit writer ([`audit`]), callers and API
//! keys ([`auth`]), optional Redis coordination ([`coord`]) and the private PostgreSQL of
//! `awooop up` ([`local`]).

pub mod audit;
pub mod auth;
pub mod coord;
pub mod db;
pub mod events;
pub mod listen;
pub mod local;
pub mod notify;
pub mod tenancy;
