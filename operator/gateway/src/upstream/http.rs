//! Streamable HTTP transport (MCP 2025-11-25, 2025-06-18): one MCP session per
//! [`HttpSession`], its own keep-alive connection pool, credentials as (sensitive) headers.
//!
//! * `initialize` → `notifications/initialized`, then `tools/call` with `Mcp-Session-Id` and
//!   `MCP-Protocol-Version`; concurrent calls share the session (initialization happens once,
//!   behind a lock).
//! * A response is `application/json` or `text/event-stream`; from a stream the JSON-RPC
//!   response with the request's id is taken (server pings are answered, notifications
//!   ignored).
//! * HTTP 404 on a request that carried a session id means the session expired: the client
//!   initializes again once and retries.
//! * Redirects are not followed: a redirect could carry the credential headers to another
//!   origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

use super::protocol::{self, Incoming, SseParser};
use super::{UpstreamConfig, UpstreamError};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const SESSION_NAME: HeaderName = HeaderName::from_static(SESSION_HEADER);
const VERSION_NAME: HeaderName = HeaderName::from_static(VERSION_HEADER);
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static("traceparent");
const IDEMPOTENCY_NAME: HeaderName = HeaderName::from_static("idempotency-key");

struct Session {
    id: Option<HeaderValue>,
    version: &'static str,
    generation: u64,
}

pub struct HttpSession {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Accept, Content-Type and the credential headers (marked sensitive).
    headers: HeaderMap,
    state: RwLock<Option<Arc<Session>>>,
    init: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    generation: AtomicU64,
    max_bytes: usize,
}

/// Why a POST did not produce a result.
enum PostError {
    /// 404 on a request with a session id: initialize again.
    Expired,
    Up(UpstreamError),
}

impl From<UpstreamError> for PostError {
    fn from(e: UpstreamError) -> Self {
        PostError::Up(e)
    }
}

fn transport_error(e: reqwest::Error) -> UpstreamError {
    // reqwest's Display names the URL and the cause; the URL is configuration (no credential
    // values: those live in headers), but keep messages short and stable.
    if let Some(why) = awooop_policy::egress::refused_by_policy(&e) {
        UpstreamError::Refused {
            code: awooop_core::error::ErrorCode::EgressDenied,
            message: why.to_string(),
        }
    } else if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Unavailable("cannot connect to the upstream server".into())
    } else if e.is_body() || e.is_decode() {
        UpstreamError::Unavailable(
            "the upstream connection broke while reading the response".into(),
        )
    } else {
        UpstreamError::Unavailable("the upstream request failed".into())
    }
}

impl HttpSession {
    /// A session toward `url` (not connected until the first call) for `project` under the
    /// egress policy `egress`: the URL is checked now, and every address its host resolves to
    /// on every new connection. `credentials` are (header name, full value including any
    /// prefix).
    pub fn new(
        url: &str,
        credentials: &[(&str, String)],
        cfg: &UpstreamConfig,
        project: &str,
        egress: std::sync::Arc<awooop_policy::egress::EgressPolicy>,
    ) -> Result<Self, UpstreamError> {
        let url = egress
            .check(project, url)
            .map_err(|e| UpstreamError::Refused {
                code: awooop_core::error::ErrorCode::EgressDenied,
                message: e.to_string(),
            })?
            .url;
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in credentials {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                UpstreamError::Unavailable(format!("invalid credential header name {name:?}"))
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                UpstreamError::Unavailable(format!(
                    "the credential for header {name} is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        // The guarded resolver, no redirects (one could carry the credential headers to another
        // origin), no proxy.
        let client = awooop_policy::egress::client_builder(project, egress)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(cfg.idle_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|_| UpstreamError::Unavailable("cannot build the HTTP client".into()))?;
        Ok(Self {
            client,
            url,
            headers,
            state: RwLock::new(None),
            init: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            max_bytes: cfg.max_response_bytes,
        })
    }

    /// The negotiated protocol version, once initialized.
    pub fn protocol_version(&self) -> Option<&'static str> {
        self.current().map(|s| s.version)
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.state.read().expect("session lock").clone()
    }

    pub async fn call(
        &self,
        tool: &str,
        arguments: &Map<String, Value>,
        traceparent: Option<&str>,
        idempotency_key: Option<&str>,
        _deadline: tokio::time::Instant,
    ) -> Result<Value, UpstreamError> {
        let session = self.session().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The body is serialized again for the rare retry rather than cloned on every call.
        let body = || protocol::tools_call(id, tool, arguments, None, idempotency_key);
        let traceparent = Headers {
            traceparent,
            idempotency_key,
        };
        match self.request(&session, body(), id, traceparent).await {
            Err(PostError::Expired) => {
                tracing::debug!("upstream MCP session expired; initializing again");
                self.reset(&session);
                let session = self.session().await?;
                match self.request(&session, body(), id, traceparent).await {
                    Ok(v) => Ok(v),
                    Err(PostError::Expired) => Err(UpstreamError::Unavailable(
                        "the upstream rejected a freshly initialized session (HTTP 404)".into(),
                    )),
                    Err(PostError::Up(e)) => Err(e),
                }
            }
            Ok(v) => Ok(v),
            Err(PostError::Up(e)) => Err(e),
        }
    }

    /// End the session (DELETE, best effort) so the upstream can free it.
    pub async fn close(&self) {
        let Some(s) = self.state.write().expect("session lock").take() else {
            return;
        };
        let Some(id) = &s.id else { return };
        let req = self
            .client
            .request(Method::DELETE, self.url.clone())
            .headers(self.headers.clone())
            .header(SESSION_HEADER, id.clone())
            .header(VERSION_HEADER, s.version)
            .timeout(std::time::Duration::from_secs(2));
        let _ = req.send().await;
    }

    fn reset(&self, stale: &Session) {
        let mut st = self.state.write().expect("session lock");
        if st
            .as_ref()
            .is_some_and(|s| s.generation == stale.generation)
        {
            *st = None;
        }
    }

    async fn session(&self) -> Result<Arc<Session>, UpstreamError> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _guard = self.init.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        // Boxed: once per session, and two requests' worth of state inline.
        let s = Arc::new(Box::pin(self.initialize()).await?);
        *self.state.write().expect("session lock") = Some(s.clone());
        Ok(s)
    }

    async fn initialize(&self) -> Result<Session, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(protocol::initialize(id))
            .send()
            .await
            .map_err(transport_error)?;
        let session_id = resp.headers().get(SESSION_HEADER).cloned();
        let pending = Session {
            id: session_id,
            version: protocol::PROTOCOL_LATEST,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let result = match self.read(resp, &pending, id).await {
            Ok(r) => r,
            Err(PostError::Expired) => {
                return Err(UpstreamError::Protocol(
                    "initialize answered HTTP 404".into(),
                ));
            }
            Err(PostError::Up(UpstreamError::Rpc { code, message })) => {
                return Err(UpstreamError::Protocol(format!(
                    "initialize failed with JSON-RPC error {code}: {}",
                    message.chars().take(200).collect::<String>()
                )));
            }
            Err(PostError::Up(e)) => return Err(e),
        };
        let version = protocol::negotiated(&result)?;
        let session = Session { version, ..pending };
        let resp = self
            .post(&session, protocol::initialized(), Headers::default())
            .send()
            .await
            .map_err(transport_error)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Protocol(format!(
                "notifications/initialized answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        Ok(session)
    }

    fn post(
        &self,
        session: &Session,
        body: Vec<u8>,
        extra: Headers<'_>,
    ) -> reqwest::RequestBuilder {
        // Assembled directly: the prepared header map cloned once and constant header names,
        // instead of the builder merging the map entry by entry and parsing each name on every
        // call. `append`, as the builder's `header` does, so a credential header of the same
        // name is not silently replaced.
        let mut req = reqwest::Request::new(Method::POST, self.url.clone());
        let h = req.headers_mut();
        *h = self.headers.clone();
        h.append(VERSION_NAME, HeaderValue::from_static(session.version));
        if let Some(id) = &session.id {
            h.append(SESSION_NAME, id.clone());
        }
        if let Some(tp) = extra
            .traceparent
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.append(TRACEPARENT_NAME, tp);
        }
        if let Some(k) = extra
            .idempotency_key
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.append(IDEMPOTENCY_NAME, k);
        }
        *req.body_mut() = Some(body.into());
        reqwest::RequestBuilder::from_parts(self.client.clone(), req)
    }

    async fn request(
        &self,
        session: &Session,
        body: Vec<u8>,
        id: u64,
        traceparent: Headers<'_>,
    ) -> Result<Value, PostError> {
        let resp = self
            .post(session, body, traceparent)
            .send()
            .await
            .map_err(transport_error)?;
        self.read(resp, session, id).await
    }

    /// Turn an HTTP response into the JSON-RPC outcome of request `id`.
    async fn read(
        &self,
        mut resp: reqwest::Response,
        session: &Session,
        id: u64,
    ) -> Result<Value, PostError> {
        let status = resp.status();
        if status == StatusCode::NOT_FOUND && session.id.is_some() {
            return Err(PostError::Expired);
        }
        if !status.is_success() {
            let code = status.as_u16();
            return Err(PostError::Up(match code {
                401 | 403 => UpstreamError::Unavailable(format!(
                    "the upstream rejected the gateway's credentials (HTTP {code})"
                )),
                429 | 500..=599 => {
                    UpstreamError::Unavailable(format!("the upstream answered HTTP {code}"))
                }
                _ => UpstreamError::Protocol(format!("the upstream answered HTTP {code}")),
            }));
        }
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ctype.starts_with("text/event-stream") {
            return self.read_sse(&mut resp, session, id).await;
        }
        if !ctype.starts_with("application/json") {
            return Err(PostError::Up(UpstreamError::Protocol(format!(
                "unexpected response content type {:?} (HTTP {})",
                ctype.chars().take(64).collect::<String>(),
                status.as_u16()
            ))));
        }
        // Sized once from Content-Length (capped: the header is the upstream's claim), instead
        // of growing by doubling through a 16 KiB result.
        let hint = resp
            .content_length()
            .unwrap_or(0)
            .min(self.max_bytes as u64) as usize;
        let mut body = Vec::with_capacity(hint);
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(self.too_large());
            }
            body.extend_from_slice(&chunk);
        }
        match protocol::response_for(&body, id) {
            Some(r) => r.map_err(PostError::Up),
            None => Err(PostError::Up(UpstreamError::Protocol(
                "the response does not answer the request".into(),
            ))),
        }
    }

    fn too_large(&self) -> PostError {
        PostError::Up(UpstreamError::Protocol(format!(
            "the upstream response exceeds {} bytes",
            self.max_bytes
        )))
    }

    async fn read_sse(
        &self,
        resp: &mut reqwest::Response,
        session: &Session,
        id: u64,
    ) -> Result<Value, PostError> {
        let mut parser = SseParser::default();
        let mut total = 0usize;
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            total += chunk.len();
            if total > self.max_bytes.saturating_mul(2) || parser.buffered() > self.max_bytes {
                return Err(self.too_large());
            }
            for ev in parser.push(&chunk) {
                // Other event types, and events without data (the priming event a server sends
                // so that a client can resume), carry no JSON-RPC message.
                if ev.event.as_deref().is_some_and(|e| e != "message") || ev.data.trim().is_empty()
                {
                    continue;
                }
                let Ok(msg) = serde_json::from_str::<Value>(&ev.data) else {
                    return Err(PostError::Up(UpstreamError::Protocol(
                        "the upstream sent an event that is not JSON".into(),
                    )));
                };
                match protocol::classify(msg) {
                    Incoming::Response { id: got, outcome } if got == id => {
                        return outcome.map_err(PostError::Up);
                    }
                    Incoming::Request { id: rid, method } => {
                        // Answer on a separate POST; the stream stays open for our response.
                        let answer = protocol::answer_server_request(&rid, &method);
                        let _ = self.post(session, answer, Headers::default()).send().await;
                    }
                    _ => {}
                }
            }
        }
        Err(PostError::Up(UpstreamError::Protocol(
            "the event stream ended without a response".into(),
        )))
    }
}

/// Per-call headers of a `tools/call` POST.
#[derive(Clone, Copy, Default)]
struct Headers<'a> {
    traceparent: Option<&'a str>,
    /// The tool call's idempotency key (`Idempotency-Key`), the same for every attempt of one
    /// run step.
    idempotency_key: Option<&'a str>,
}
