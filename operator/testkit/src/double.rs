//! A local LLM provider double for tests and `awooop bench budget`: an axum server on
//! 127.0.0.1:0 speaking the three real wire formats (OpenAI Chat Completions JSON + SSE with
//! `tool_calls` deltas and usage; Anthropic Messages JSON + SSE events; Ollama `/api/chat`
//! JSON + NDJSON), scripted per test with a queue of [`Reply`]s: text, tool calls, HTTP
//! errors, delays, garbage, truncated and endless streams. It records every request (body and
//! whether an API key header came with it) so tests can check what left the platform.
//!
//! It is as strict as the real providers where the platform could get them wrong:
//! * authentication: OpenAI-style APIs take `Authorization: Bearer`, Anthropic `x-api-key`
//!   (plus `anthropic-version`); the other API's header is a 401 in that provider's error
//!   format, and with [`ProviderDouble::require_key`] a missing or different key is too;
//! * usage: an OpenAI stream carries its usage chunk only when the request asked for it
//!   (`stream_options.include_usage`), as the real API does;
//! * scripting: a call with nothing scripted is a violation, answered with a 500 and recorded;
//!   dropping a double with violations panics, so the test fails (declare a standing reply
//!   with [`ProviderDouble::always`] where any number of calls is expected, e.g. benchmarks).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A final text answer.
    Text(String),
    /// Tool calls `(name, arguments)`.
    ToolCalls(Vec<(String, Value)>),
    /// A tool call whose arguments are this raw (possibly malformed) string.
    RawToolCall(String, String),
    /// An HTTP error status with a JSON error body.
    Status(u16),
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
    /// A 200 response whose body is not the wire format.
    Garbage,
    /// The stream of the inner reply, cut before its terminator.
    Truncated(Box<Reply>),
    /// Text streamed forever (ignores `max_tokens`), one chunk every `Duration`.
    Endless(Duration),
    /// The inner reply, reporting this usage instead of the double's own count.
    WithUsage {
        input: u64,
        output: u64,
        reply: Box<Reply>,
    },
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
    pub has_api_key: bool,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    /// The reply when the script is empty ([`ProviderDouble::always`]).
    standing: Option<Reply>,
    /// The only API key accepted ([`ProviderDouble::require_key`]).
    key: Option<String>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
}

/// The running double. Dropping it stops the server.
pub struct ProviderDouble {
    pub addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProviderDouble {
    fn drop(&mut self) {
        self.task.abort();
        let violations = self.take_violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("the provider double saw calls it was not scripted for: {violations:?}");
        }
    }
}

impl ProviderDouble {
    pub async fn start() -> std::io::Result<Self> {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/api/chat", post(ollama))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // Streamed replies are many small writes: without TCP_NODELAY, Nagle's algorithm and
        // the client's delayed ACK add ~40 ms stalls that no real provider shows.
        let listener = {
            use axum::serve::ListenerExt;
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue replies, served in order. A call when the queue is empty is a violation (see the
    /// module docs) unless a standing reply is set with [`Self::always`].
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .lock()
            .expect("double lock")
            .script
            .extend(replies);
    }

    /// Drop replies still queued.
    pub fn clear_script(&self) {
        self.inner.lock().expect("double lock").script.clear();
    }

    /// Answer `reply` whenever the script is empty (for callers that make any number of calls).
    pub fn always(&self, reply: Reply) {
        self.inner.lock().expect("double lock").standing = Some(reply);
    }

    /// Accept only this API key, in the API's own header; anything else is a 401.
    pub fn require_key(&self, key: &str) {
        self.inner.lock().expect("double lock").key = Some(key.to_string());
    }

    /// Calls the double was not scripted for, taken (so a test that expects one can clear it).
    pub fn take_violations(&self) -> Vec<String> {
        match self.inner.lock() {
            Ok(mut g) => std::mem::take(&mut g.violations),
            Err(_) => Vec::new(),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("double lock").requests.clone()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    OpenAi,
    Anthropic,
    Ollama,
}

type Shared = State<Arc<Mutex<Inner>>>;

async fn openai(s: Shared, h: HeaderMap, body: axum::body::Bytes) -> Response {
    handle(Api::OpenAi, "/v1/chat/completions", s, h, body).await
}
async fn anthropic(s: Shared, h: HeaderMap, body: axum::body::Bytes) -> Response {
    handle(Api::Anthropic, "/v1/messages", s, h, body).await
}
async fn ollama(s: Shared, h: HeaderMap, body: axum::body::Bytes) -> Response {
    handle(Api::Ollama, "/api/chat", s, h, body).await
}

async fn handle(
    api: Api,
    path: &str,
    State(inner): Shared,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return provider_error(
            api,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid JSON",
        );
    };
    let has_api_key = headers.contains_key("authorization") || headers.contains_key("x-api-key");
    let reply = {
        let mut g = inner.lock().expect("double lock");
        g.requests.push(Recorded {
            path: path.to_string(),
            body: body.clone(),
            has_api_key,
        });
        if let Err(resp) = authenticate(api, &headers, g.key.as_deref()) {
            return resp;
        }
        match g.script.pop_front().or_else(|| g.standing.clone()) {
            Some(r) => r,
            None => {
                let n = g.requests.len();
                g.violations
                    .push(format!("call #{n} to {path} with nothing scripted"));
                return provider_error(
                    api,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "the provider double has no scripted reply for this call",
                );
            }
        }
    };
    let stream = body["stream"].as_bool().unwrap_or(api == Api::Ollama);
    // OpenAI sends a usage chunk at the end of a stream only when asked to.
    let stream_usage = api != Api::OpenAi || body["stream_options"]["include_usage"] == true;
    // Prompt tokens: one per four bytes of the messages, like a real tokenizer's ballpark.
    let input_tokens = (body["messages"].to_string().len() as u64)
        .div_ceil(4)
        .max(1);
    respond(api, reply, stream, (input_tokens, None, stream_usage)).await
}

/// The provider's own error body: OpenAI `{"error": {message, type, param, code}}`, Anthropic
/// `{"type": "error", "error": {type, message}}`, Ollama `{"error": message}`.
fn provider_error(api: Api, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = match api {
        Api::OpenAi => {
            let code = if status == StatusCode::UNAUTHORIZED {
                json!("invalid_api_key")
            } else {
                Value::Null
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Api::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Api::Ollama => json!({"error": message}),
    };
    (status, axum::Json(body)).into_response()
}

/// The real APIs' header rules (see the module docs); `Err` is the response to send.
#[allow(clippy::result_large_err)]
fn authenticate(api: Api, headers: &HeaderMap, key: Option<&str>) -> Result<(), Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").map(|v| v.strip_prefix("Bearer ").unwrap_or(""));
    match api {
        Api::OpenAi => {
            let unauthorized = |m: &str| {
                Err(provider_error(
                    api,
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    m,
                ))
            };
            if header("x-api-key").is_some() {
                return unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                );
            }
            match (bearer, key) {
                (Some(""), _) => {
                    unauthorized("Invalid authorization header: expected `Bearer KEY`.")
                }
                (None, Some(_)) => unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                ),
                (Some(b), Some(k)) if b != k => unauthorized("Incorrect API key provided."),
                _ => Ok(()),
            }
        }
        Api::Anthropic => {
            let unauthorized = |m: &str| {
                Err(provider_error(
                    api,
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    m,
                ))
            };
            if header("anthropic-version").is_none() {
                return Err(provider_error(
                    api,
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "anthropic-version: header is required",
                ));
            }
            match (header("x-api-key"), key) {
                (None, _) if bearer.is_some() => unauthorized("x-api-key header is required"),
                (None, Some(_)) => unauthorized("x-api-key header is required"),
                (Some(got), Some(k)) if got != k => unauthorized("invalid x-api-key"),
                _ => Ok(()),
            }
        }
        Api::Ollama => match (bearer, key) {
            // Ollama itself has no auth; behind a proxy that wants a key, it is a Bearer token.
            (Some(b), Some(k)) if b == k => Ok(()),
            (_, Some(_)) => Err(provider_error(
                api,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unauthorized",
            )),
            _ => Ok(()),
        },
    }
}

/// `(input tokens, reported output override, whether a stream carries usage)`.
type UsageSpec = (u64, Option<u64>, bool);

fn respond(
    api: Api,
    reply: Reply,
    stream: bool,
    usage: UsageSpec,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                respond(api, *inner, stream, usage).await
            }
            Reply::WithUsage {
                input,
                output,
                reply,
            } => respond(api, *reply, stream, (input, Some(output), usage.2)).await,
            Reply::Status(code) => provider_error(
                api,
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "api_error",
                &format!("scripted {code}"),
            ),
            Reply::Garbage => {
                (StatusCode::OK, "<html>this is not a model</html>\n").into_response()
            }
            Reply::Endless(every) => {
                let chunk = match api {
                    Api::OpenAi => "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"blah blah blah blah \"}}]}\n\n".to_string(),
                    Api::Anthropic => "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"blah blah blah blah \"}}\n\n".to_string(),
                    Api::Ollama => "{\"message\":{\"role\":\"assistant\",\"content\":\"blah blah blah blah \"},\"done\":false}\n".to_string(),
                };
                let s = futures::stream::unfold((), move |_| {
                    let c = chunk.clone();
                    async move {
                        tokio::time::sleep(every).await;
                        Some((Ok::<_, std::io::Error>(c), ()))
                    }
                });
                stream_response(api, Body::from_stream(s))
            }
            Reply::Truncated(inner) => {
                let mut chunks = chunks(api, &inner, usage);
                chunks.truncate(chunks.len().saturating_sub(2).max(1));
                stream_body(api, chunks)
            }
            other if stream => stream_body(api, chunks(api, &other, usage)),
            other => axum::Json(whole(api, &other, usage)).into_response(),
        }
    })
}

fn stream_response(api: Api, body: Body) -> Response {
    let ct = if api == Api::Ollama {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    Response::builder()
        .status(200)
        .header("content-type", ct)
        .body(body)
        .expect("valid response")
}

/// Chunks are sent with a small pause between them, like a real token stream (and so a test
/// can drop a call mid-stream).
fn stream_body(api: Api, chunks: Vec<String>) -> Response {
    let s = futures::stream::unfold(chunks.into_iter(), |mut it| async move {
        let c = it.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, std::io::Error>(c), it))
    });
    stream_response(api, Body::from_stream(s))
}

fn parts(reply: &Reply) -> (String, Vec<(String, String)>) {
    match reply {
        Reply::Text(t) => (t.clone(), vec![]),
        Reply::ToolCalls(calls) => (
            String::new(),
            calls
                .iter()
                .map(|(n, a)| (n.clone(), a.to_string()))
                .collect(),
        ),
        Reply::RawToolCall(n, raw) => (String::new(), vec![(n.clone(), raw.clone())]),
        _ => (String::new(), vec![]),
    }
}

fn output_tokens(text: &str, calls: &[(String, String)]) -> u64 {
    let bytes = text.len() + calls.iter().map(|(n, a)| n.len() + a.len()).sum::<usize>();
    (bytes as u64).div_ceil(4).max(1)
}

/// Split text into pieces of a few characters, like tokens.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect()).collect()
}

fn chunks(api: Api, reply: &Reply, (input_tokens, out, with_usage): UsageSpec) -> Vec<String> {
    let (text, calls) = parts(reply);
    let out = out.unwrap_or_else(|| output_tokens(&text, &calls));
    let sse = |v: Value| format!("data: {v}\n\n");
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut c = Vec::new();
    match api {
        Api::OpenAi => {
            c.push(sse(
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            ));
            for p in pieces(&text) {
                c.push(sse(
                    json!({"choices": [{"index": 0, "delta": {"content": p}}]}),
                ));
            }
            for (i, (name, args)) in calls.iter().enumerate() {
                c.push(sse(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}}]})));
                let half = args.len() / 2;
                let (a, b) = args.split_at(args.floor_char_boundary(half));
                for frag in [a, b] {
                    c.push(sse(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": frag}}]}}]})));
                }
            }
            let finish = if calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            c.push(sse(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
            ));
            if with_usage {
                c.push(sse(json!({"choices": [], "usage": {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}})));
            }
            c.push("data: [DONE]\n\n".into());
        }
        Api::Anthropic => {
            c.push(ev("message_start", json!({"type": "message_start", "message": {"id": "msg_double", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})));
            let mut idx = 0;
            if !text.is_empty() {
                c.push(ev("content_block_start", json!({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}})));
                for p in pieces(&text) {
                    c.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": p}})));
                }
                c.push(ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": idx}),
                ));
                idx += 1;
            }
            for (i, (name, args)) in calls.iter().enumerate() {
                c.push(ev("content_block_start", json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}})));
                c.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": args}})));
                c.push(ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": idx}),
                ));
                idx += 1;
            }
            let stop = if calls.is_empty() {
                "end_turn"
            } else {
                "tool_use"
            };
            c.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": out}})));
            c.push(ev("message_stop", json!({"type": "message_stop"})));
        }
        Api::Ollama => {
            for p in pieces(&text) {
                c.push(format!("{}\n", json!({"model": "double", "message": {"role": "assistant", "content": p}, "done": false})));
            }
            if !calls.is_empty() {
                let tcs: Vec<Value> = calls
                    .iter()
                    .map(|(n, a)| json!({"function": {"name": n, "arguments": serde_json::from_str::<Value>(a).unwrap_or(Value::String(a.clone()))}}))
                    .collect();
                c.push(format!("{}\n", json!({"model": "double", "message": {"role": "assistant", "content": "", "tool_calls": tcs}, "done": false})));
            }
            c.push(format!("{}\n", json!({"model": "double", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop", "prompt_eval_count": input_tokens, "eval_count": out})));
        }
    }
    c
}

fn whole(api: Api, reply: &Reply, (input_tokens, out, _): UsageSpec) -> Value {
    let (text, calls) = parts(reply);
    let out = out.unwrap_or_else(|| output_tokens(&text, &calls));
    match api {
        Api::OpenAi => {
            let tcs: Vec<Value> = calls.iter().enumerate().map(|(i, (n, a))| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": n, "arguments": a}})).collect();
            let mut msg = json!({"role": "assistant", "content": text});
            if !tcs.is_empty() {
                msg["tool_calls"] = Value::Array(tcs);
            }
            json!({"id": "chatcmpl-double", "object": "chat.completion", "choices": [{"index": 0, "message": msg, "finish_reason": if calls.is_empty() {"stop"} else {"tool_calls"}}], "usage": {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}})
        }
        Api::Anthropic => {
            let mut content = Vec::new();
            if !text.is_empty() {
                content.push(json!({"type": "text", "text": text}));
            }
            for (i, (n, a)) in calls.iter().enumerate() {
                content.push(json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": n, "input": serde_json::from_str::<Value>(a).unwrap_or(Value::Null)}));
            }
            json!({"id": "msg_double", "type": "message", "role": "assistant", "content": content, "stop_reason": if calls.is_empty() {"end_turn"} else {"tool_use"}, "usage": {"input_tokens": input_tokens, "output_tokens": out}})
        }
        Api::Ollama => {
            let tcs: Vec<Value> = calls.iter().map(|(n, a)| json!({"function": {"name": n, "arguments": serde_json::from_str::<Value>(a).unwrap_or(Value::Null)}})).collect();
            json!({"model": "double", "message": {"role": "assistant", "content": text, "tool_calls": tcs}, "done": true, "done_reason": "stop", "prompt_eval_count": input_tokens, "eval_count": out})
        }
    }
}
