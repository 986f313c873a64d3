//! The pure part of the MCP client: JSON-RPC message building, protocol-version negotiation,
//! response matching and an incremental Server-Sent-Events parser. No I/O, table-tested.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::UpstreamError;

/// The revision we ask for in `initialize`.
pub const PROTOCOL_LATEST: &str = "2025-11-25";
/// Revisions we accept when the server negotiates one (newest first). 2025-06-18 is the
/// previous revision with the same Streamable HTTP rules (`MCP-Protocol-Version` header, no
/// batching), so a server that only speaks it works unchanged.
pub const PROTOCOL_SUPPORTED: &[&str] = &["2025-11-25", "2025-06-18"];

pub const CLIENT_NAME: &str = "awooop-gateway";

/// `initialize` request body.
pub fn initialize(id: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_LATEST,
            "capabilities": {},
            "clientInfo": {"name": CLIENT_NAME, "version": env!("CARGO_PKG_VERSION")},
        }
    }))
    .expect("static JSON serializes")
}

/// `notifications/initialized` body.
pub fn initialized() -> Vec<u8> {
    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec()
}

/// `notifications/cancelled` for a request we gave up on (timeout).
pub fn cancelled(id: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": "timeout"}
    }))
    .expect("static JSON serializes")
}

#[derive(Serialize)]
struct Call<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'static str,
    params: CallParams<'a>,
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
    serde_json::to_vec(&Call {
        jsonrpc: "2.0",
        id,
        method: "tools/call",
        params: CallParams {
            name: tool,
            arguments,
            meta,
        },
    })
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
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    } else {
        json!({"jsonrpc": "2.0", "id": id,
               "error": {"code": -32601, "message": "method not supported by the gateway client"}})
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

/// One Server-Sent Event (only the fields MCP uses).
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Incremental SSE parser (WHATWG rules for the fields MCP uses): feed it chunks as they
/// arrive; it returns complete events. Lines end in LF, CRLF or CR; `data` lines are joined
/// with LF; comment lines (`:`) are skipped; an event without data is not dispatched.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_data: bool,
    /// A CR ended the previous chunk: a LF starting the next one belongs to it.
    pending_cr: bool,
}

impl SseParser {
    /// Bytes buffered but not yet parsed (an incomplete line).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.cur.data.len()
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut chunk = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = 0;
        let buf = std::mem::take(&mut self.buf);
        while i < buf.len() {
            let b = buf[i];
            if b == b'\n' || b == b'\r' {
                let line = &buf[start..i];
                self.line(line, &mut out);
                if b == b'\r' {
                    if i + 1 < buf.len() {
                        if buf[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf = buf[start..].to_vec();
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.cur));
            } else {
                self.cur = SseEvent::default();
            }
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.cur.event = Some(value.to_string()),
            "id" => self.cur.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
            id: None,
        }
    }

    #[test]
    fn sse_parser_table() {
        // (chunks, expected events)
        let cases: Vec<(Vec<&[u8]>, Vec<SseEvent>)> = vec![
            (
                vec![b"event: message\ndata: {\"a\":1}\n\n"],
                vec![ev(Some("message"), "{\"a\":1}")],
            ),
            // split across chunks, CRLF line ends, CR split from LF
            (
                vec![b"event: mess", b"age\r", b"\ndata: x\r\n", b"\r\n"],
                vec![ev(Some("message"), "x")],
            ),
            // multi-line data, comment, priming event without data, no space after colon
            (
                vec![b": keepalive\n\nid: 7\n\ndata:a\ndata: b\n\n"],
                vec![ev(None, "a\nb")],
            ),
            // two events in one chunk, bare CR line endings
            (
                vec![b"data: 1\r\rdata: 2\r\r"],
                vec![ev(None, "1"), ev(None, "2")],
            ),
            // incomplete event stays buffered
            (vec![b"data: 1\n"], vec![]),
        ];
        for (chunks, want) in cases {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            for c in &chunks {
                got.extend(p.push(c));
            }
            assert_eq!(got, want, "chunks {chunks:?}");
        }
    }

    #[test]
    fn sse_event_ids_are_kept() {
        let mut p = SseParser::default();
        let got = p.push(b"id: 42\ndata: {}\n\n");
        assert_eq!(got[0].id.as_deref(), Some("42"));
    }

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
