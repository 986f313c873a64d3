//! JSON-RPC 2.0 envelopes: the one set of builders for every message AwoooP sends (the MCP
//! server in `awooop-gateway::server`, the MCP upstream client in `awooop-gateway::upstream`,
//! the MCP fixture in `awooop-testkit`).
//!
//! Keys are written in the order `jsonrpc`, `id`, `method`/`result`/`error`, `params` (the
//! workspace serialises JSON maps in insertion order), so the bytes on the wire are the same
//! whichever side builds a message.

use serde::Serialize;
use serde_json::{Value, json};

pub const VERSION: &str = "2.0";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A request with typed, borrowed params: serialised straight from them (no copy into a
/// `Value`), for the hot path (`tools/call` with the agent's arguments).
#[derive(Debug, Serialize)]
pub struct Request<'a, P: Serialize> {
    pub jsonrpc: &'static str,
    pub id: u64,
    pub method: &'a str,
    pub params: P,
}

impl<'a, P: Serialize> Request<'a, P> {
    pub fn new(id: u64, method: &'a str, params: P) -> Self {
        Self {
            jsonrpc: VERSION,
            id,
            method,
            params,
        }
    }
}

/// A request.
pub fn request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": VERSION, "id": id.into(), "method": method, "params": params})
}

/// A notification (no id); `params` left out when `None`.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": VERSION, "method": method});
    if let Some(p) = params {
        v["params"] = p;
    }
    v
}

/// A success response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": VERSION, "id": id, "result": result})
}

/// An error response; `data` left out when `None`.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": VERSION, "id": id, "error": err})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_byte_stable() {
        let cases = [
            (
                request(1u64, "ping", json!({})),
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#,
            ),
            (
                notification("notifications/initialized", None),
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ),
            (
                notification("notifications/cancelled", Some(json!({"requestId": 3}))),
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
            ),
            (
                result(json!("a"), json!({})),
                r#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
            ),
            (
                error(Value::Null, PARSE_ERROR, "parse error", None),
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
            ),
            (
                error(json!(7), -32001, "no", Some(json!({"code": "E-X"}))),
                r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"no","data":{"code":"E-X"}}}"#,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(v.to_string(), want);
        }
        let typed =
            serde_json::to_string(&Request::new(2, "tools/call", json!({"name": "t"}))).unwrap();
        assert_eq!(
            typed,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t"}}"#
        );
    }
}
