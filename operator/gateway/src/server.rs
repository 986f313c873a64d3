//! The MCP server side: JSON-RPC 2.0 messages, version negotiation and method dispatch.
//! Transport (Streamable HTTP, sessions, authentication) lives in `awooop_http::mcp`.
//!
//! Methods: `initialize`, `ping`, `tools/list`, `tools/call`; notifications and client
//! responses are accepted and ignored. Every other method (e.g. the stateless revision's
//! `server/discover`) gets JSON-RPC `-32601 Method not found`, so current clients fall back to
//! `initialize`. Gate denials and other platform errors are JSON-RPC errors whose `data`
//! carries the stable `E-…` code and the trace id.

use serde_json::{Value, json};

use super::service::{APPROVAL_META_KEY, Caller, Gateway};
use awooop_core::error::{Error, ErrorCode};
use awooop_runtime::TraceContext;

/// Protocol revisions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
pub const LATEST_VERSION: &str = "2025-11-25";

pub use awooop_core::jsonrpc::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
    error as rpc_error, result as rpc_result,
};
/// Server-defined: the call was refused by a gate or the caller's credential.
pub const FORBIDDEN: i64 = -32001;

/// The version to answer an `initialize` with: the client's if supported, else our latest.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED_VERSIONS.iter().find(|v| **v == r).copied())
        .unwrap_or(LATEST_VERSION)
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// One incoming JSON-RPC message.
#[derive(Debug)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
    },
    /// A response from the client (to a server request we never send): ignored.
    Response,
}

/// Parse one message; on failure, the JSON-RPC error response to send.
pub fn parse(body: &[u8]) -> Result<Incoming, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| rpc_error(Value::Null, PARSE_ERROR, "parse error", None))?;
    let Value::Object(mut m) = v else {
        // Batches were removed from MCP in 2025-06-18.
        return Err(rpc_error(
            Value::Null,
            INVALID_REQUEST,
            "expected one JSON-RPC message object (batches are not supported)",
            None,
        ));
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(rpc_error(
            m.remove("id").unwrap_or(Value::Null),
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
            None,
        ));
    }
    let id = m.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(rpc_error(
            Value::Null,
            INVALID_REQUEST,
            "id must be a string or an integer",
            None,
        ));
    }
    match (id, m.remove("method")) {
        (Some(id), Some(Value::String(method))) => Ok(Incoming::Request {
            id,
            method,
            params: m.remove("params").unwrap_or_else(|| json!({})),
        }),
        (None, Some(Value::String(method))) => Ok(Incoming::Notification { method }),
        (Some(_), None) if m.contains_key("result") || m.contains_key("error") => {
            Ok(Incoming::Response)
        }
        (id, _) => Err(rpc_error(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "not a JSON-RPC request, notification or response",
            None,
        )),
    }
}

/// The JSON-RPC error code of a platform error.
pub fn rpc_code(code: ErrorCode) -> i64 {
    use ErrorCode::*;
    match code {
        McpGateUnknownTool | McpGateArgumentsInvalid | ReqMalformed | ReqInvalidParam => {
            INVALID_PARAMS
        }
        McpProtocol => INVALID_REQUEST,
        McpUpstream | McpUpstreamTimeout | McpCredential | Internal | Unavailable
        | TenantMissing => INTERNAL_ERROR,
        _ => FORBIDDEN,
    }
}

/// A platform error as a JSON-RPC error: message `E-…: text`, data `{code, trace_id, details}`.
pub fn error_response(id: Value, e: &Error, trace_id: &str) -> Value {
    if e.code.http_status() >= 500 && e.code != ErrorCode::McpUpstream {
        tracing::error!(code = e.code.as_str(), trace_id, error = ?e.source, "{}", e.message);
    }
    let mut data = json!({"code": e.code.as_str(), "trace_id": trace_id});
    if let Some(d) = &e.details {
        data["details"] = d.clone();
    }
    rpc_error(
        id,
        rpc_code(e.code),
        &format!("{}: {}", e.code.as_str(), e.message),
        Some(data),
    )
}

pub fn initialize_result(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "awooop-gateway", "title": "AwoooP MCP gateway", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Tools are exposed as {provider}__{tool}. Write and execute tools need an approval token in _meta \"awooop.dev/approval\"."
    })
}

/// Dispatch a request other than `initialize` for an authenticated caller.
pub async fn dispatch(
    gw: &Gateway,
    caller: &Caller,
    id: Value,
    method: &str,
    params: Value,
    trace: &TraceContext,
) -> Value {
    match reply(gw, caller, id, method, params, trace, false).await {
        Reply::Value(v) => v,
        // Only asked for with `as_text`.
        Reply::Text(t) => serde_json::from_str(&t).unwrap_or(Value::Null),
    }
}

/// [`dispatch`] as the JSON text of the response (what `/mcp` sends). A `tools/call` result
/// is serialised once, by the gateway core, and framed here; the bytes are those of
/// `dispatch(..).to_string()`.
pub async fn dispatch_text(
    gw: &Gateway,
    caller: &Caller,
    id: Value,
    method: &str,
    params: Value,
    trace: &TraceContext,
) -> String {
    match reply(gw, caller, id, method, params, trace, true).await {
        Reply::Value(v) => v.to_string(),
        Reply::Text(t) => t,
    }
}

enum Reply {
    Value(Value),
    Text(String),
}

/// The head of the JSON-RPC success response `{"jsonrpc":"2.0","id":…,"result":…}` that a
/// result already serialised as JSON text is written into (the key order of [`rpc_result`]);
/// its tail is `}`.
fn result_head(id: &Value) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"#)
}

async fn reply(
    gw: &Gateway,
    caller: &Caller,
    id: Value,
    method: &str,
    params: Value,
    trace: &TraceContext,
    as_text: bool,
) -> Reply {
    match method {
        "ping" => Reply::Value(rpc_result(id, json!({}))),
        "tools/list" => Reply::Value(match gw.list_tools(caller).await {
            Ok(tools) => rpc_result(id, json!({"tools": tools})),
            Err(e) => error_response(id, &e, &trace.trace_id),
        }),
        "tools/call" => {
            let Value::Object(mut p) = params else {
                return Reply::Value(rpc_error(
                    id,
                    INVALID_PARAMS,
                    "params must be an object",
                    None,
                ));
            };
            let Some(Value::String(name)) = p.remove("name") else {
                return Reply::Value(rpc_error(
                    id,
                    INVALID_PARAMS,
                    "params.name must be a string",
                    None,
                ));
            };
            let arguments = p.remove("arguments");
            let approval = p
                .get("_meta")
                .and_then(|m| m.get(APPROVAL_META_KEY))
                .and_then(Value::as_str);
            // An agent's own idempotency key rides along to the upstream (and binds the
            // approval token's single use to this intent); malformed keys are not forwarded.
            let idempotency = p
                .get("_meta")
                .and_then(|m| m.get(super::upstream::protocol::IDEMPOTENCY_META_KEY))
                .and_then(Value::as_str)
                .filter(|k| awooop_runtime::valid_idempotency_key(k));
            if as_text {
                let head = result_head(&id);
                let frame = crate::service::Frame {
                    head: &head,
                    tail: "}",
                };
                match gw
                    .call_tool_json(
                        caller,
                        &name,
                        arguments,
                        approval,
                        idempotency,
                        trace,
                        frame,
                    )
                    .await
                {
                    Ok(response) => Reply::Text(response),
                    Err(e) => Reply::Value(error_response(id, &e, &trace.trace_id)),
                }
            } else {
                Reply::Value(
                    match gw
                        .call_tool_with(caller, &name, arguments, approval, idempotency, trace)
                        .await
                    {
                        Ok(result) => rpc_result(id, result),
                        Err(e) => error_response(id, &e, &trace.trace_id),
                    },
                )
            }
        }
        _ => Reply::Value(rpc_error(id, METHOD_NOT_FOUND, "method not found", None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2025-11-25")), "2025-11-25");
        assert_eq!(negotiate(Some("2026-07-28")), LATEST_VERSION);
        assert_eq!(negotiate(Some("1999-01-01")), LATEST_VERSION);
        assert_eq!(negotiate(None), LATEST_VERSION);
    }

    #[test]
    fn parsing() {
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ok(Incoming::Request { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Incoming::Notification { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Incoming::Response)
        ));
        for (bad, code) in [
            (&b"not json"[..], PARSE_ERROR),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","id":1}"#, INVALID_REQUEST),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e["error"]["code"], code, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn framed_results_are_the_bytes_of_the_value_response() {
        let result = json!({"content": [{"type": "text", "text": "é \"q\" \n"}], "isError": false});
        for id in [json!(7), json!("a\"b"), json!(u64::MAX)] {
            assert_eq!(
                awooop_core::json_text::framed(&result_head(&id), &result, "}"),
                rpc_result(id.clone(), result.clone()).to_string(),
                "{id}"
            );
        }
    }

    #[test]
    fn errors_carry_the_stable_code() {
        let e = Error::new(ErrorCode::McpGateGrantMissing, "no grant");
        let r = error_response(json!(7), &e, "t1");
        assert_eq!(r["id"], 7);
        assert_eq!(r["error"]["code"], FORBIDDEN);
        assert_eq!(r["error"]["data"]["code"], "E-MCP-GATE-002");
        assert_eq!(r["error"]["message"], "E-MCP-GATE-002: no grant");
        assert_eq!(rpc_code(ErrorCode::McpGateUnknownTool), INVALID_PARAMS);
    }
}
