//! MCP gateway. (This branch carries only the upstream client; the gateway core lives in the
//! gateway branch and owns this file.)

pub mod upstream;
