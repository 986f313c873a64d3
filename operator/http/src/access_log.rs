//! One info-level log line per API request: method, route, status, latency, project and trace
//! id. Never the body, the query string or a header value other than the trace id: bodies carry
//! tenant data and headers carry credentials.
//!
//! The project is the one the credential was verified for: the [`super::extract::Caller`]
//! extractor writes it into a [`LogProject`] slot this middleware puts into the request's
//! extensions, so an unverified claim (a forged API key prefix, a header) is never logged as
//! the request's project.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// Response header carrying the trace id of a request that brought no `traceparent` (so a
/// client can quote it when reading the server log and the audit). A handler may set it to
/// the trace it ran under (`/mcp` does for the JSON-RPC requests of a session); otherwise this
/// middleware generates one.
pub const TRACE_HEADER: &str = "x-awooop-trace-id";

/// Where the caller extractor records the verified project of a request.
#[derive(Clone, Default)]
pub struct LogProject(Arc<OnceLock<String>>);

impl LogProject {
    pub fn set(&self, project: &str) {
        let _ = self.0.set(project.to_string());
    }
}

/// The trace id of a W3C `traceparent` value, when it is well formed.
fn trace_id_of(v: Option<&HeaderValue>) -> Option<String> {
    let s = v?.to_str().ok()?;
    awooop_core::trace::TraceContext::from_traceparent(s)
        .ok()
        .map(|t| t.trace_id)
}

/// The middleware (`Router::layer(axum::middleware::from_fn(access_log))`, applied by
/// [`super::serve`] to the whole router so `/mcp` and the webhooks are logged too).
pub async fn access_log(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // The route template (`/v1/platform/runs/{id}`), never the concrete path: ids in paths are
    // not secrets, but a template keeps lines comparable; unknown paths log as `-`.
    // (A clone of the matched path is a reference count, not a copy of the string.)
    let route = req.extensions().get::<MatchedPath>().cloned();
    let request_trace = trace_id_of(req.headers().get("traceparent"));
    let project = LogProject::default();
    req.extensions_mut().insert(project.clone());
    let mut resp = next.run(req).await;
    // A created run answers with its own traceparent: log the run's trace id. A handler that
    // generated the trace it ran under (an MCP call without `traceparent`) names it in the
    // trace header: that one, not a new id.
    let named = resp
        .headers()
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let trace_id = match trace_id_of(resp.headers().get("traceparent"))
        .or(named)
        .or(request_trace)
    {
        Some(t) => t,
        None => {
            let t = awooop_core::trace::TraceContext::generate().trace_id;
            if let Ok(v) = HeaderValue::from_str(&t) {
                resp.headers_mut().insert(TRACE_HEADER, v);
            }
            t
        }
    };
    tracing::info!(
        target: "awooop::http",
        method = %method,
        route = %route.as_ref().map_or("-", MatchedPath::as_str),
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        project = project.0.get().map(String::as_str).unwrap_or("-"),
        trace_id = %trace_id,
        "request"
    );
    resp
}
