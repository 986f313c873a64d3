//! The MCP gateway: the only way from an agent to a tool or a credential.
//!
//! ```text
//! agent ──/mcp (JSON-RPC, Streamable HTTP)──► server ──► service::Gateway ──► upstream (MCP client)
//! runtime worker ──ToolGateway (in process)──────────────►      │
//!                           tokens (caller identity)            ├─ gates (pure: project, agent, tool, environment, approval)
//!                                                               ├─ registry (compiled per active revision)
//!                                                               ├─ approval (HS256 JWT, jti once: Redis + PostgreSQL)
//!                                                               ├─ credentials (project-bound refs, TTL cache)
//!                                                               ├─ sanitize (exact values + patterns, 16K truncation)
//!                                                               └─ audit (batched mcp_call_audit rows)
//! ```
//!
//! See docs/gateway.md for the protocol, the gates and the credential rules.

pub mod approval;
pub mod audit;
pub mod credentials;
pub mod evidence;
pub mod gates;
pub mod keys;
pub use awooop_control::registry;
pub mod in_process;
pub mod sanitize;
pub mod server;
pub mod service;
pub mod tokens;
pub mod upstream;

pub use service::{Caller, Gateway, GatewayConfig, ToolUpstream};
