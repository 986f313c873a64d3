//! A minimal, fast MCP server: the fixture for the upstream client's tests and the upstream of
//! `awooop bench gateway` (a Python upstream tops out near 500 calls/s on this machine and would
//! hide the gateway's cost).
//!
//! Streamable HTTP ([`FixtureServer`], axum on 127.0.0.1:0) or stdio ([`serve_stdio`], behind
//! the hidden `awooop mcp-fixture --stdio`). Same tools as the Python fixture
//! (tests/mcp/fixture_server.py):
//!
//! | tool | result |
//! |---|---|
//! | `echo` | text = the arguments as JSON, `structuredContent` = the arguments |
//! | `secret {name}` | the raw value of request header `name` (HTTP) or env var `name` (stdio) |
//! | `leak_text`, `leak_structured`, `leak_nested`, `leak_error` (JSON-RPC error), `leak_is_error`, `leak_base64`, `leak_urlencoded` `{name}` | that secret in the named place/encoding |
//! | `blob {size}` | a text content of `size` bytes |
//! | `fail {mode}` | `rpc`: JSON-RPC error -32001; else an `isError` result |
//! | `sleep {ms}` | waits, then `slept` |
//! | `rendezvous {group, n, tag}` | waits until `n` calls of `group` are in flight at once, then answers them in reverse order of arrival: `{"tag", "arrived"}`; an `isError` result if they never overlap (10 s) |
//! | `pid` | `{"pid": n}` of the serving process |
//! | `headers` | the request headers (HTTP) |
//! | `env` | `{"names": [...]}`: the names of the process's environment variables |
//! | `exit` | stdio only: the process exits without answering |
//! | `meta` | the request's `params._meta` (e.g. the `traceparent` a stdio client forwards) |
//!
//! It speaks what the client needs, strictly enough to catch client mistakes: sessions
//! (`Mcp-Session-Id` required after initialize, 404 for unknown ones), 202 for notifications,
//! DELETE to end a session, `-32601` for unknown methods (Python clients probe
//! `server/discover` first). With `sse: true` every response is a `text/event-stream` that
//! first carries a progress notification and a server `ping` (the client must answer it).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Map, Value, json};

use awooop_core::jsonrpc;
use awooop_gateway::upstream::protocol::PROTOCOL_SUPPORTED;

/// Where the `secret`/`leak_*` tools read the credential from.
pub enum Source<'a> {
    Headers(&'a HeaderMap),
    Env,
}

impl Source<'_> {
    fn get(&self, name: &str) -> String {
        match self {
            Source::Headers(h) => h
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            Source::Env => std::env::var(name).unwrap_or_default(),
        }
    }
}

fn text(s: String) -> Value {
    json!({"content": [{"type": "text", "text": s}], "isError": false})
}

fn structured(v: Value) -> Value {
    json!({"content": [{"type": "text", "text": v.to_string()}],
           "structuredContent": v, "isError": false})
}

fn tool_error(s: String) -> Value {
    json!({"content": [{"type": "text", "text": s}], "isError": true})
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The tool list (`tools/list` result).
pub fn tools() -> Value {
    let name_arg = json!({"type": "object", "properties": {"name": {"type": "string"}},
                          "required": ["name"]});
    let mut list = vec![
        json!({"name": "echo", "description": "Echo the arguments",
               "inputSchema": {"type": "object"}}),
        json!({"name": "blob", "description": "Return `size` bytes of text (`text`: \"cjk\" for Chinese)",
               "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}, "text": {"type": "string"}}}}),
        json!({"name": "fail", "description": "Fail as a JSON-RPC error (mode=rpc) or an isError result",
               "inputSchema": {"type": "object", "properties": {"mode": {"type": "string"}}}}),
        json!({"name": "sleep", "description": "Wait `ms` milliseconds",
               "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer"}}}}),
        json!({"name": "rendezvous", "description": "Wait for `n` concurrent calls of `group`, answer in reverse arrival order",
               "inputSchema": {"type": "object", "properties": {"group": {"type": "string"}, "n": {"type": "integer"}}}}),
        json!({"name": "pid", "description": "The serving process id", "inputSchema": {"type": "object"}}),
        json!({"name": "headers", "description": "The request headers", "inputSchema": {"type": "object"}}),
        json!({"name": "env", "description": "Names of the environment variables", "inputSchema": {"type": "object"}}),
        json!({"name": "meta", "description": "The request's _meta", "inputSchema": {"type": "object"}}),
        json!({"name": "exit", "description": "stdio: exit without answering", "inputSchema": {"type": "object"}}),
    ];
    for n in [
        "secret",
        "leak_text",
        "leak_structured",
        "leak_nested",
        "leak_error",
        "leak_is_error",
        "leak_base64",
        "leak_urlencoded",
    ] {
        list.push(
            json!({"name": n, "description": "Echo a credential (test fixture)",
                         "inputSchema": name_arg.clone()}),
        );
    }
    json!({ "tools": list })
}

/// Run one tool (everything but `sleep` and `exit`, which the transports handle).
/// `Err((code, message))` is a JSON-RPC error.
pub fn call(name: &str, args: &Map<String, Value>, src: &Source) -> Result<Value, (i64, String)> {
    let arg_str = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("");
    let secret = || src.get(arg_str("name"));
    Ok(match name {
        "echo" => structured(Value::Object(args.clone())),
        "blob" => {
            let size = args
                .get("size")
                .and_then(Value::as_u64)
                .unwrap_or(1024)
                .min(16 * 1024 * 1024) as usize;
            // `text: "cjk"`: Traditional Chinese (3 bytes a character), cut to at most `size`
            // bytes on a character boundary; otherwise one repeated ASCII byte.
            if arg_str("text") == "cjk" {
                let line = "訂單已出貨，商品：無線藍牙耳機（黑色），配送至台北市信義區。";
                let mut t = line.repeat(size / line.len() + 1);
                let mut end = size.min(t.len());
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
                text(t)
            } else {
                text("x".repeat(size))
            }
        }
        "fail" => {
            if arg_str("mode") == "rpc" {
                return Err((-32001, "fixture failure".into()));
            }
            tool_error("fixture tool failure".into())
        }
        "pid" => structured(json!({"pid": std::process::id()})),
        "headers" => match src {
            Source::Headers(h) => structured(Value::Object(
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            Value::String(v.to_str().unwrap_or("").to_string()),
                        )
                    })
                    .collect(),
            )),
            Source::Env => structured(json!({})),
        },
        "env" => {
            let mut names: Vec<String> = std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            names.sort();
            structured(json!({ "names": names }))
        }
        "secret" => text(secret()),
        "leak_text" => text(format!("the secret is {} (oops)", secret())),
        "leak_structured" => structured(json!({"token": secret()})),
        "leak_nested" => structured(json!({"outer": {"list": [{"deep": secret()}]}})),
        "leak_error" => {
            return Err((
                -32001,
                format!("upstream failed with credential {}", secret()),
            ));
        }
        "leak_is_error" => tool_error(format!("tool failed with credential {}", secret())),
        "leak_base64" => text(base64::engine::general_purpose::STANDARD.encode(secret())),
        "leak_urlencoded" => text(format!(
            "https://example.invalid/cb?token={}",
            urlencode(&secret())
        )),
        other => return Err((-32602, format!("unknown tool {other:?}"))),
    })
}

fn sleep_ms(args: &Map<String, Value>) -> u64 {
    args.get("ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(60_000)
}

/// Calls of each `rendezvous` group: `(arrived, answered)`.
static RENDEZVOUS: Mutex<Vec<(String, u64, u64)>> = Mutex::new(Vec::new());

/// `rendezvous`: proves that calls overlap in the server (a server or client that handles one
/// call at a time never gets `n` of them in flight) and makes their answers leave in reverse
/// order of arrival (so the client must match responses to requests by id).
async fn rendezvous(args: &Map<String, Value>) -> Value {
    let group = args
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let n = args
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(2)
        .clamp(1, 64);
    let state = |f: &mut dyn FnMut(&mut (String, u64, u64)) -> u64| -> u64 {
        let mut g = RENDEZVOUS.lock().expect("rendezvous lock");
        let i = match g.iter().position(|e| e.0 == group) {
            Some(i) => i,
            None => {
                g.push((group.clone(), 0, 0));
                g.len() - 1
            }
        };
        f(&mut g[i])
    };
    let arrived = state(&mut |e| {
        e.1 += 1;
        e.1 - 1
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // No call of the group answers before all `n` have arrived: they are in flight together.
    loop {
        let (all, in_flight) = {
            let mut both = (0, 0);
            state(&mut |e| {
                both = (e.1, e.1 - e.2);
                0
            });
            both
        };
        if all >= n {
            break;
        }
        if std::time::Instant::now() > deadline {
            return tool_error(format!(
                "rendezvous {group}: only {in_flight} of {n} calls were in flight together"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // The last to arrive answers first.
    while state(&mut |e| e.2) < n - 1 - arrived {
        if std::time::Instant::now() > deadline {
            return tool_error(format!("rendezvous {group}: earlier answers never left"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    state(&mut |e| {
        e.2 += 1;
        0
    });
    structured(json!({"tag": args.get("tag").cloned().unwrap_or(Value::Null), "arrived": arrived}))
}

/// The JSON-RPC response for one request (`None` for notifications and client responses).
async fn handle(msg: &Value, src: &Source<'_>, init_version: &mut Option<String>) -> Option<Value> {
    let id = msg.get("id").cloned()?;
    let method = msg.get("method").and_then(Value::as_str)?;
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    let res: Result<Value, (i64, String)> = match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let v = init_version.clone().unwrap_or_else(|| {
                if PROTOCOL_SUPPORTED.contains(&asked) {
                    asked.to_string()
                } else {
                    PROTOCOL_SUPPORTED[0].to_string()
                }
            });
            *init_version = Some(v.clone());
            Ok(
                json!({"protocolVersion": v, "capabilities": {"tools": {"listChanged": false}},
                      "serverInfo": {"name": "awooop-fixture", "version": env!("CARGO_PKG_VERSION")}}),
            )
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(tools()),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let empty = Map::new();
            let args = params
                .get("arguments")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if name == "rendezvous" {
                Ok(rendezvous(args).await)
            } else if name == "sleep" {
                tokio::time::sleep(std::time::Duration::from_millis(sleep_ms(args))).await;
                Ok(text("slept".into()))
            } else if name == "meta" {
                Ok(structured(
                    params.get("_meta").cloned().unwrap_or(json!({})),
                ))
            } else if name == "exit" {
                if matches!(src, Source::Env) {
                    std::process::exit(3);
                }
                Ok(text("exit is for stdio".into()))
            } else {
                call(name, args, src)
            }
        }
        _ => Err((-32601, format!("method not found: {method}"))),
    };
    Some(match res {
        Ok(r) => jsonrpc::result(id, r),
        Err((code, message)) => jsonrpc::error(id, code, &message, None),
    })
}

/// Options of the HTTP fixture.
#[derive(Clone, Debug, Default)]
pub struct FixtureOptions {
    /// Answer with `text/event-stream` instead of `application/json`.
    pub sse: bool,
    /// Negotiate this protocol version whatever the client asks (e.g. "2025-06-18").
    pub protocol: Option<String>,
    /// Answer 401 unless this header has this value.
    pub require_header: Option<(String, String)>,
}

#[derive(Default)]
struct Stats {
    initializes: AtomicU64,
    connections: AtomicU64,
    deleted: AtomicU64,
    client_answers: AtomicU64,
    calls: AtomicU64,
}

struct FixtureState {
    opts: FixtureOptions,
    sessions: Mutex<HashSet<String>>,
    stats: Stats,
    log: Mutex<VecDeque<ToolCallSeen>>,
}

/// How many of the latest `tools/call`s the fixture keeps for [`FixtureServer::tool_calls`].
///
/// Why a bound: the log was a `Vec` of every call, pushed under a mutex. A benchmark sends
/// millions of calls; in about half of the `wrk` runs of `scripts/bench-gateway-wrk.sh`
/// (direct and through the gateway alike) one fixture thread ran alone for 130–340 ms while
/// every other call waited, and those stalls were the p99 the harnesses reported. The likely
/// mechanism is the vector's doubling, which copies (and faults in) tens to hundreds of
/// megabytes while holding the mutex; with the bound, the stalls are gone
/// (docs/benchmarks.md, "Session 17"). A test looks at its own few calls; the fixture is not a
/// recorder of everything.
pub const CALL_LOG_CAP: usize = 4096;

/// One `tools/call` as the fixture received it (for exactly-once and idempotency checks).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallSeen {
    pub tool: String,
    pub arguments: Value,
    /// The `Idempotency-Key` header.
    pub idempotency_header: Option<String>,
    /// `params._meta` as sent.
    pub meta: Option<Value>,
    pub at: std::time::Instant,
}

/// A running HTTP fixture; stops when dropped.
pub struct FixtureServer {
    pub addr: SocketAddr,
    state: Arc<FixtureState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FixtureServer {
    pub async fn start(opts: FixtureOptions) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().expect("address"), opts).await
    }

    pub async fn bind(addr: SocketAddr, opts: FixtureOptions) -> std::io::Result<Self> {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FixtureState {
            opts,
            sessions: Mutex::new(HashSet::new()),
            stats: Stats::default(),
            log: Mutex::new(VecDeque::new()),
        });
        let counter = state.clone();
        let listener = listener.tap_io(move |tcp| {
            counter.stats.connections.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
        });
        let app = Router::new()
            .route("/mcp", post(post_mcp).delete(delete_mcp).get(get_mcp))
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            state,
            stop: Some(tx),
        })
    }

    /// `http://127.0.0.1:PORT/mcp`
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
    /// `initialize` requests served.
    pub fn initializes(&self) -> u64 {
        self.state.stats.initializes.load(Ordering::Relaxed)
    }
    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.stats.connections.load(Ordering::Relaxed)
    }
    /// Sessions ended by the client with DELETE.
    pub fn deleted_sessions(&self) -> u64 {
        self.state.stats.deleted.load(Ordering::Relaxed)
    }
    /// Responses the client sent to server requests (pings over SSE).
    pub fn client_answers(&self) -> u64 {
        self.state.stats.client_answers.load(Ordering::Relaxed)
    }
    /// `tools/call` requests served.
    pub fn calls(&self) -> u64 {
        self.state.stats.calls.load(Ordering::Relaxed)
    }

    /// The `tools/call`s received, in order: every one, or the latest [`CALL_LOG_CAP`] once
    /// more have come ([`FixtureServer::calls`] counts them all).
    pub fn tool_calls(&self) -> Vec<ToolCallSeen> {
        self.state
            .log
            .lock()
            .expect("log")
            .iter()
            .cloned()
            .collect()
    }
    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.state.sessions.lock().expect("sessions").len()
    }
    /// Forget every session: the next request with an old session id gets 404.
    pub fn expire_sessions(&self) {
        self.state.sessions.lock().expect("sessions").clear();
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        jsonrpc::error(Value::Null, code, message, None).to_string(),
    )
        .into_response()
}

async fn get_mcp() -> Response {
    // No standalone server-to-client stream: the spec allows 405 here.
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

async fn delete_mcp(State(st): State<Arc<FixtureState>>, headers: HeaderMap) -> Response {
    let id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if st.sessions.lock().expect("sessions").remove(id) {
        st.stats.deleted.fetch_add(1, Ordering::Relaxed);
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn post_mcp(
    State(st): State<Arc<FixtureState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((name, value)) = &st.opts.require_header
        && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(StatusCode::BAD_REQUEST, -32700, "parse error");
    };
    if !msg.is_object() {
        return rpc_error(StatusCode::BAD_REQUEST, -32600, "batches are not supported");
    }
    let method = msg.get("method").and_then(Value::as_str);
    let is_init = method == Some("initialize");
    if !is_init {
        let sid = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
        match sid {
            None => return rpc_error(StatusCode::BAD_REQUEST, -32600, "missing Mcp-Session-Id"),
            Some(s) if !st.sessions.lock().expect("sessions").contains(s) => {
                return rpc_error(StatusCode::NOT_FOUND, -32600, "unknown session");
            }
            Some(_) => {}
        }
        if headers.get("mcp-protocol-version").is_none() {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                "missing MCP-Protocol-Version",
            );
        }
    }
    if method.is_none() {
        // A client's answer to one of our requests (the SSE ping).
        st.stats.client_answers.fetch_add(1, Ordering::Relaxed);
        return StatusCode::ACCEPTED.into_response();
    }
    if msg.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    if method == Some("tools/call") {
        st.stats.calls.fetch_add(1, Ordering::Relaxed);
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let seen = ToolCallSeen {
            tool: params["name"].as_str().unwrap_or("").to_string(),
            arguments: params.get("arguments").cloned().unwrap_or(json!({})),
            idempotency_header: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            meta: params.get("_meta").cloned(),
            at: std::time::Instant::now(),
        };
        log_call(&st.log, seen);
    }
    let mut version = st.opts.protocol.clone();
    let Some(out) = handle(&msg, &Source::Headers(&headers), &mut version).await else {
        return StatusCode::ACCEPTED.into_response();
    };
    let mut resp = if st.opts.sse {
        let mut s = String::new();
        s.push_str(": stream start\n\nid: 0\ndata: \n\n");
        if !is_init {
            s.push_str("event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n");
            s.push_str("event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"srv-ping\",\"method\":\"ping\"}\n\n");
        }
        s.push_str("event: message\ndata: ");
        s.push_str(&out.to_string());
        s.push_str("\n\n");
        ([(header::CONTENT_TYPE, "text/event-stream")], s).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            out.to_string(),
        )
            .into_response()
    };
    if is_init {
        st.stats.initializes.fetch_add(1, Ordering::Relaxed);
        let sid = uuid::Uuid::new_v4().simple().to_string();
        st.sessions.lock().expect("sessions").insert(sid.clone());
        resp.headers_mut().insert(
            "mcp-session-id",
            HeaderValue::from_str(&sid).expect("hex is a header value"),
        );
    }
    resp
}

/// Append a call to the log, dropping the oldest beyond [`CALL_LOG_CAP`] (after the lock is
/// released: its strings and maps are freed outside it).
fn log_call(log: &Mutex<VecDeque<ToolCallSeen>>, seen: ToolCallSeen) {
    let evicted = {
        let mut log = log.lock().expect("log");
        let evicted = if log.len() >= CALL_LOG_CAP {
            log.pop_front()
        } else {
            None
        };
        log.push_back(seen);
        evicted
    };
    drop(evicted);
}

/// Serve MCP over stdin/stdout until stdin closes (`awooop mcp-fixture --stdio`). Requests
/// run concurrently, so responses may come back out of order (the client must match ids).
pub async fn serve_stdio() -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    eprintln!("awooop mcp fixture (stdio) ready");
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let out = out.clone();
        tasks.spawn(async move {
            let mut version = None;
            if let Some(resp) = handle(&msg, &Source::Env, &mut version).await {
                let mut o = out.lock().await;
                let mut bytes = resp.to_string().into_bytes();
                bytes.push(b'\n');
                let _ = o.write_all(&bytes).await;
                let _ = o.flush().await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_tools_put_the_secret_where_they_say() {
        let mut h = HeaderMap::new();
        h.insert("x-key", HeaderValue::from_static("s3cr3t/+ =?"));
        let src = Source::Headers(&h);
        let mut args = Map::new();
        args.insert("name".into(), json!("x-key"));
        let get = |t: &str| call(t, &args, &src);
        assert_eq!(get("secret").unwrap()["content"][0]["text"], "s3cr3t/+ =?");
        assert_eq!(
            get("leak_structured").unwrap()["structuredContent"]["token"],
            "s3cr3t/+ =?"
        );
        assert_eq!(
            get("leak_nested").unwrap()["structuredContent"]["outer"]["list"][0]["deep"],
            "s3cr3t/+ =?"
        );
        assert!(get("leak_error").unwrap_err().1.contains("s3cr3t/+ =?"));
        assert_eq!(get("leak_is_error").unwrap()["isError"], true);
        assert_eq!(
            get("leak_base64").unwrap()["content"][0]["text"],
            "czNjcjN0LysgPT8="
        );
        assert!(
            get("leak_urlencoded").unwrap()["content"][0]["text"]
                .as_str()
                .unwrap()
                .ends_with("token=s3cr3t%2F%2B%20%3D%3F")
        );
        assert_eq!(get("nope").unwrap_err().0, -32602);
    }

    #[test]
    fn the_call_log_keeps_the_latest_calls_and_stays_bounded() {
        let log = Mutex::new(VecDeque::new());
        let seen = |i: usize| ToolCallSeen {
            tool: format!("t{i}"),
            arguments: json!({ "i": i }),
            idempotency_header: None,
            meta: None,
            at: std::time::Instant::now(),
        };
        for i in 0..CALL_LOG_CAP {
            log_call(&log, seen(i));
        }
        assert_eq!(
            log.lock().unwrap().len(),
            CALL_LOG_CAP,
            "every call up to the cap"
        );
        for i in CALL_LOG_CAP..CALL_LOG_CAP * 3 + 7 {
            log_call(&log, seen(i));
        }
        let log = log.into_inner().unwrap();
        assert_eq!(log.len(), CALL_LOG_CAP);
        // The latest calls, in order.
        assert_eq!(
            log.front().unwrap().tool,
            format!("t{}", CALL_LOG_CAP * 2 + 7)
        );
        assert_eq!(
            log.back().unwrap().tool,
            format!("t{}", CALL_LOG_CAP * 3 + 6)
        );
        assert!(log.iter().zip(log.iter().skip(1)).all(|(a, b)| {
            a.arguments["i"].as_u64().unwrap() + 1 == b.arguments["i"].as_u64().unwrap()
        }));
        // No regrowth past the cap: the buffer never doubled beyond what the cap needs.
        assert!(
            log.capacity() < CALL_LOG_CAP * 2,
            "capacity {}",
            log.capacity()
        );
    }

    #[test]
    fn blob_and_fail() {
        let mut args = Map::new();
        args.insert("size".into(), json!(1000));
        let r = call("blob", &args, &Source::Env).unwrap();
        assert_eq!(r["content"][0]["text"].as_str().unwrap().len(), 1000);
        args.insert("text".into(), json!("cjk"));
        let r = call("blob", &args, &Source::Env).unwrap();
        let t = r["content"][0]["text"].as_str().unwrap();
        // 1000 bytes of 3-byte characters: the cut lands on the boundary below.
        assert_eq!((t.len(), t.chars().count()), (999, 333));
        assert!(t.starts_with("訂單"));
        let mut args = Map::new();
        args.insert("mode".into(), json!("rpc"));
        assert_eq!(call("fail", &args, &Source::Env).unwrap_err().0, -32001);
        args.insert("mode".into(), json!("tool"));
        assert_eq!(call("fail", &args, &Source::Env).unwrap()["isError"], true);
    }
}
