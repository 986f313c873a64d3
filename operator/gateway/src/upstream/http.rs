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
//! * Requests go through [`UpstreamClient`] (hyper's pooled client with the egress policy's
//!   resolver), assembled once per call from a prepared header map and the parsed URI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::client::{self, UpstreamClient};
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
    client: UpstreamClient,
    uri: Uri,
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

/// A request that got no response. The client's Display names the cause; keep messages
/// short and stable (the cause goes to the server log only, by the caller).
fn transport_error(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if let Some(why) = awooop_policy::egress::refused_by_policy(&e) {
        UpstreamError::Refused {
            code: awooop_core::error::ErrorCode::EgressDenied,
            message: why.to_string(),
        }
    } else if client::is_timeout(&e) {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Unavailable("cannot connect to the upstream server".into())
    } else {
        UpstreamError::Unavailable("the upstream request failed".into())
    }
}

/// A response whose body broke off.
fn body_error(_: hyper::Error) -> UpstreamError {
    UpstreamError::Unavailable("the upstream connection broke while reading the response".into())
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
        // Parsed once: every request clones it (a reference count).
        let uri: Uri = url.as_str().parse().map_err(|_| {
            UpstreamError::Unavailable("the upstream URL is not a valid URI".into())
        })?;
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
        let client = UpstreamClient::new(project, egress, cfg.connect_timeout, cfg.idle_timeout)?;
        Ok(Self {
            client,
            uri,
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
        let mut req = http::Request::new(client::Body::default());
        *req.method_mut() = Method::DELETE;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        *h = self.headers.clone();
        h.append(SESSION_NAME, id.clone());
        h.append(VERSION_NAME, HeaderValue::from_static(s.version));
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.client.send(req)).await;
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
            .send(self.request_to(protocol::initialize(id), |_| {}))
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
            .client
            .send(self.post(&session, protocol::initialized(), Headers::default()))
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

    /// A POST of `body` with the prepared headers (cloned once), then whatever `more` adds.
    /// Added headers are appended, so a credential header of the same name is never replaced.
    fn request_to(
        &self,
        body: Vec<u8>,
        more: impl FnOnce(&mut HeaderMap),
    ) -> http::Request<client::Body> {
        let mut req = http::Request::new(client::Body::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        *h = self.headers.clone();
        more(h);
        req
    }

    /// A POST within `session`, with the per-call headers.
    fn post(
        &self,
        session: &Session,
        body: Vec<u8>,
        extra: Headers<'_>,
    ) -> http::Request<client::Body> {
        self.request_to(body, |h| {
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
        })
    }

    async fn request(
        &self,
        session: &Session,
        body: Vec<u8>,
        id: u64,
        traceparent: Headers<'_>,
    ) -> Result<Value, PostError> {
        let resp = self
            .client
            .send(self.post(session, body, traceparent))
            .await
            .map_err(transport_error)?;
        self.read(resp, session, id).await
    }

    /// Turn an HTTP response into the JSON-RPC outcome of request `id`.
    async fn read(
        &self,
        resp: client::Response,
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
            return self.read_sse(resp.into_body(), session, id).await;
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
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .min(self.max_bytes as u64) as usize;
        let mut incoming = resp.into_body();
        let mut body = Vec::with_capacity(hint);
        while let Some(chunk) = next_chunk(&mut incoming).await? {
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
        mut incoming: hyper::body::Incoming,
        session: &Session,
        id: u64,
    ) -> Result<Value, PostError> {
        let mut parser = SseParser::default();
        let mut total = 0usize;
        while let Some(chunk) = next_chunk(&mut incoming).await? {
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
                        let _ = self
                            .client
                            .send(self.post(session, answer, Headers::default()))
                            .await;
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

/// The next data chunk of a response body (trailers skipped); `None` at its end.
async fn next_chunk(body: &mut hyper::body::Incoming) -> Result<Option<Bytes>, UpstreamError> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(body_error)?.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Per-call headers of a `tools/call` POST.
#[derive(Clone, Copy, Default)]
struct Headers<'a> {
    traceparent: Option<&'a str>,
    /// The tool call's idempotency key (`Idempotency-Key`), the same for every attempt of one
    /// run step.
    idempotency_key: Option<&'a str>,
}
