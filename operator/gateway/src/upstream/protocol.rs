//! The pure part of the MCP client: JSON-RPC message building, protocol-version negotiation,
//! response matching and an incremental Server-Sent-Events parser. No I/O, table-tested.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::UpstreamError;
use awooop_core::jsonrpc;

/// The revision we ask for in `initialize`.
pub const PROTOCOL_LATEST: &str = "2025-11-25";
/// Revisions we accept when the server negotiates one (newest first). 2025-06-18 is the
/// previous revision with the same Streamable HTTP rules (`MCP-Protocol-Version` header, no
/// batching), so a server that only speaks it works unchanged.
pub const PROTOCOL_SUPPORTED: &[&str] = &["2025-11-25", "2025-06-18"];

pub const CLIENT_NAME: &str = "awooop-gateway";

/// `initialize` request body.
pub fn initialize(id: u64) -> Vec<u8> {
    serde_json::to_vec(&jsonrpc::request(
        id,
        "initialize",
        json!({
            "protocolVersion": PROTOCOL_LATEST,
            "capabilities": {},
            "clientInfo": {"name": CLIENT_NAME, "version": env!("CARGO_PKG_VERSION")},
        }),
    ))
    .expect("static JSON serializes")
}

/// `notifications/initialized` body.
pub fn initialized() -> Vec<u8> {
    serde_json::to_vec(&jsonrpc::notification("notifications/initialized", None))
        .expect("static JSON serializes")
}

/// `notifications/cancelled` for a request we gave up on (timeout).
pub fn cancelled(id: u64) -> Vec<u8> {
    serde_json::to_vec(&jsonrpc::notification(
        "notifications/cancelled",
        Some(json!({"requestId": id, "reason": "timeout"})),
    ))
    .expect("static JSON serializes")
}

#[derive(Serialize)]
struct CallParams<'a> {
    name: &'a str,
    arguments: &'a Map<String, Value>,
    #[serde(rename = "_meta", skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
}

#[derive(Serialize)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(
        rename = "awooop.dev/idempotency-key",
        skip_serializing_if = "Option::is_none"
    )]
    idempotency_key: Option<&'a str>,
}

/// `_meta` key carrying a tool call's idempotency key (the same for every attempt of one run
/// step; HTTP upstreams also get it as the `Idempotency-Key` header).
pub const IDEMPOTENCY_META_KEY: &str = "awooop.dev/idempotency-key";

/// `tools/call` body, serialized straight from the borrowed arguments (no copy of them).
/// `traceparent` goes into `params._meta` (stdio has no headers; HTTP sends the header); so
/// does the idempotency key, for every transport.
pub fn tools_call(
    id: u64,
    tool: &str,
    arguments: &Map<String, Value>,
    traceparent: Option<&str>,
    idempotency_key: Option<&str>,
) -> Vec<u8> {
    let meta = (traceparent.is_some() || idempotency_key.is_some()).then_some(Meta {
        traceparent,
        idempotency_key,
    });
    serde_json::to_vec(&jsonrpc::Request::new(
        id,
        "tools/call",
        CallParams {
            name: tool,
            arguments,
            meta,
        },
    ))
    .expect("a JSON map serializes")
}

/// The protocol version the server chose in its `initialize` result.
pub fn negotiated(result: &Value) -> Result<&'static str, UpstreamError> {
    let v = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            UpstreamError::Protocol("initialize result has no protocolVersion".into())
        })?;
    PROTOCOL_SUPPORTED
        .iter()
        .find(|s| **s == v)
        .copied()
        .ok_or_else(|| {
            UpstreamError::Protocol(format!(
                "server negotiated unsupported protocol version {:?}",
                truncate(v, 64)
            ))
        })
}

/// What one incoming JSON-RPC message is, from the client's point of view.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// The response to request `id`: its result or its error.
    Response {
        id: u64,
        outcome: Result<Value, UpstreamError>,
    },
    /// A request from the server (ping, sampling, ...): answer or refuse it.
    Request { id: Value, method: String },
    /// A notification or a response to an id we never sent: ignored.
    Other,
}

/// Classify a parsed JSON-RPC message.
pub fn classify(msg: Value) -> Incoming {
    let Value::Object(mut m) = msg else {
        return Incoming::Other;
    };
    if let Some(method) = m.get("method").and_then(Value::as_str) {
        return match m.get("id") {
            Some(id) if !id.is_null() => Incoming::Request {
                id: id.clone(),
                method: method.to_string(),
            },
            _ => Incoming::Other,
        };
    }
    let Some(id) = m.get("id").and_then(Value::as_u64) else {
        return Incoming::Other;
    };
    if let Some(err) = m.remove("error") {
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(-32603);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Incoming::Response {
            id,
            outcome: Err(UpstreamError::Rpc { code, message }),
        };
    }
    match m.remove("result") {
        Some(r @ Value::Object(_)) => Incoming::Response { id, outcome: Ok(r) },
        Some(_) => Incoming::Response {
            id,
            outcome: Err(UpstreamError::Protocol("result is not an object".into())),
        },
        None => Incoming::Response {
            id,
            outcome: Err(UpstreamError::Protocol(
                "response has neither result nor error".into(),
            )),
        },
    }
}

/// The answer to a server-initiated request: `ping` gets `{}`, anything else "method not
/// found" (the gateway offers no sampling, roots or elicitation to upstreams).
pub fn answer_server_request(id: &Value, method: &str) -> Vec<u8> {
    let v = if method == "ping" {
        jsonrpc::result(id.clone(), json!({}))
    } else {
        jsonrpc::error(
            id.clone(),
            jsonrpc::METHOD_NOT_FOUND,
            "method not supported by the gateway client",
            None,
        )
    };
    serde_json::to_vec(&v).expect("JSON serializes")
}

/// Parse one body or SSE data payload and pick out the response to `id`.
/// Batches (arrays) are searched too, since a 2025-03-26 server may send one.
pub fn response_for(bytes: &[u8], id: u64) -> Option<Result<Value, UpstreamError>> {
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => {
            return Some(Err(UpstreamError::Protocol(
                "upstream sent invalid JSON".into(),
            )));
        }
    };
    let items = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    for item in items {
        if let Incoming::Response { id: got, outcome } = classify(item)
            && got == id
        {
            return Some(outcome);
        }
    }
    None
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// SSE framing is the one parser of the core (WHATWG line endings: CRLF, LF, lone CR).
pub use awooop_core::sse::{SseEvent, SseParser};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        let cases = [
            (json!({"protocolVersion": "2025-11-25"}), Some("2025-11-25")),
            (json!({"protocolVersion": "2025-06-18"}), Some("2025-06-18")),
            (json!({"protocolVersion": "2024-11-05"}), None),
            (json!({}), None),
            (json!({"protocolVersion": 3}), None),
        ];
        for (result, want) in cases {
            assert_eq!(negotiated(&result).ok(), want, "{result}");
        }
    }

    #[test]
    fn classify_table() {
        let cases = [
            (
                json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}}),
                Incoming::Response {
                    id: 3,
                    outcome: Ok(json!({"content":[]})),
                },
            ),
            (
                json!({"jsonrpc":"2.0","id":4,"error":{"code":-32001,"message":"boom"}}),
                Incoming::Response {
                    id: 4,
                    outcome: Err(UpstreamError::Rpc {
                        code: -32001,
                        message: "boom".into(),
                    }),
                },
            ),
            (
                json!({"jsonrpc":"2.0","id":"s1","method":"ping"}),
                Incoming::Request {
                    id: json!("s1"),
                    method: "ping".into(),
                },
            ),
            (
                json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}),
                Incoming::Other,
            ),
            (
                json!({"jsonrpc":"2.0","id":"x","result":{}}),
                Incoming::Other,
            ),
            (json!([1, 2]), Incoming::Other),
        ];
        for (msg, want) in cases {
            assert_eq!(classify(msg.clone()), want, "{msg}");
        }
        assert!(matches!(
            classify(json!({"jsonrpc":"2.0","id":5,"result":"text"})),
            Incoming::Response {
                id: 5,
                outcome: Err(UpstreamError::Protocol(_))
            }
        ));
    }

    #[test]
    fn response_for_matches_the_id_and_searches_batches() {
        let body = br#"[{"jsonrpc":"2.0","id":1,"result":{"a":1}},{"jsonrpc":"2.0","id":2,"result":{"b":2}}]"#;
        assert_eq!(response_for(body, 2).unwrap().unwrap(), json!({"b":2}));
        assert!(response_for(body, 9).is_none());
        assert!(matches!(
            response_for(b"not json", 1),
            Some(Err(UpstreamError::Protocol(_)))
        ));
    }

    #[test]
    fn tools_call_carries_traceparent_in_meta_only_when_given() {
        let mut args = Map::new();
        args.insert("text".into(), json!("hi"));
        let with: Value =
            serde_json::from_slice(&tools_call(7, "echo", &args, Some("00-ab-cd-01"), None))
                .unwrap();
        assert_eq!(with["params"]["_meta"]["traceparent"], "00-ab-cd-01");
        assert_eq!(with["params"]["arguments"]["text"], "hi");
        assert_eq!(with["id"], 7);
        let without: Value =
            serde_json::from_slice(&tools_call(8, "echo", &args, None, None)).unwrap();
        assert!(without["params"].get("_meta").is_none());
        // The idempotency key rides in _meta on every transport, alone or with traceparent.
        let keyed: Value =
            serde_json::from_slice(&tools_call(9, "echo", &args, None, Some("r:3"))).unwrap();
        assert_eq!(
            keyed["params"]["_meta"],
            json!({IDEMPOTENCY_META_KEY: "r:3"})
        );
        let both: Value = serde_json::from_slice(&tools_call(
            9,
            "echo",
            &args,
            Some("00-ab-cd-01"),
            Some("r:3"),
        ))
        .unwrap();
        assert_eq!(both["params"]["_meta"]["traceparent"], "00-ab-cd-01");
        assert_eq!(both["params"]["_meta"][IDEMPOTENCY_META_KEY], "r:3");
    }

    #[test]
    fn server_requests_are_answered() {
        let ping: Value =
            serde_json::from_slice(&answer_server_request(&json!(1), "ping")).unwrap();
        assert_eq!(ping["result"], json!({}));
        let other: Value = serde_json::from_slice(&answer_server_request(
            &json!("a"),
            "sampling/createMessage",
        ))
        .unwrap();
        assert_eq!(other["error"]["code"], -32601);
    }
}
