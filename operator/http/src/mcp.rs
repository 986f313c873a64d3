//! `/mcp`: the gateway's MCP endpoint (Streamable HTTP transport, JSON responses).
//!
//! * POST carries one JSON-RPC message. Requests get `application/json` responses;
//!   notifications and client responses get `202 Accepted`.
//! * Identity comes from `Authorization: Bearer` on every request: a per-run token
//!   (`awr1.…`, fixing project, agent, run, environment and mode) or a project API key with the
//!   `runner` role plus `X-Awooop-Agent` and `X-Awooop-Environment` (external agents). Nothing
//!   in the JSON-RPC payload can change it.
//! * `initialize` negotiates the protocol revision and returns a signed `Mcp-Session-Id`
//!   bound to the credential; any replica with the gateway key accepts it, so sessions survive
//!   restarts. Other requests without a session get 400, with an unknown/expired one 404
//!   (the client initializes again). An unsupported `MCP-Protocol-Version` header gets 400.
//! * GET (server-initiated SSE stream) and DELETE (session end) answer 405, which the
//!   transport allows: this server sends no server-initiated messages, and signed sessions
//!   simply expire.
//! * A request with an `Origin` header not on the allow-list is refused (DNS rebinding).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use awooop_core::cache::TtlCache;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_gateway::server::{self, Incoming};
use awooop_gateway::tokens;
use awooop_gateway::{Caller, Gateway};
use awooop_runtime::TraceContext;
use awooop_store::auth;
use awooop_store::tenancy::{Db, ProjectId};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";
pub const AGENT_HEADER: &str = "x-awooop-agent";
pub const ENV_HEADER: &str = "x-awooop-environment";

/// Run id → the run exists and is not terminal (the same rules). Keyed by the run id alone: a
/// run token's MAC binds its run to its project.
type RunCache = TtlCache<uuid::Uuid, bool, Error>;
/// Run ids come and go: at most this many verdicts are held (expired ones dropped first).
const MAX_CACHED_RUNS: usize = 100_000;

#[derive(Clone)]
pub struct McpState {
    pub gateway: Arc<Gateway>,
    pub db: Db,
    pub max_body_bytes: usize,
    pub session_ttl_seconds: i64,
    /// Origins allowed to call (browsers); requests without `Origin` are not affected.
    pub allowed_origins: Arc<Vec<String>>,
    runs: RunCache,
}

impl McpState {
    pub fn new(gateway: Arc<Gateway>, db: Db, max_body_bytes: usize) -> Self {
        let ttl = gateway.config().run_liveness_ttl;
        Self {
            gateway,
            db,
            max_body_bytes,
            session_ttl_seconds: 24 * 3600,
            allowed_origins: Arc::new(Vec::new()),
            runs: RunCache::bounded(ttl, MAX_CACHED_RUNS),
        }
    }

    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> Self {
        self.allowed_origins = Arc::new(origins);
        self
    }
}

pub fn router(state: McpState) -> Router {
    Router::new()
        .route("/mcp", post(post_mcp).get(not_allowed).delete(not_allowed))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    text_response(status, body.to_string())
}

/// A response whose body is JSON text already.
fn text_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn transport_error(status: StatusCode, e: &Error) -> Response {
    json_response(
        status,
        &server::rpc_error(
            Value::Null,
            server::rpc_code(e.code),
            &format!("{}: {}", e.code.as_str(), e.message),
            Some(json!({"code": e.code.as_str()})),
        ),
    )
}

async fn not_allowed() -> Response {
    let mut r = transport_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &Error::new(
            ErrorCode::McpProtocol,
            "this endpoint takes POST only (no server-initiated stream; sessions expire)",
        ),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The caller and the digest sessions are bound to.
async fn authenticate(state: &McpState, h: &HeaderMap) -> Result<(Caller, String)> {
    let token = header_str(h, header::AUTHORIZATION.as_str())
        .ok_or_else(|| Error::new(ErrorCode::AuthMissing, "missing Authorization header"))?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::AuthInvalid,
                "expected 'Authorization: Bearer <token>'",
            )
        })?;
    let agent_h = header_str(h, AGENT_HEADER);
    let env_h = header_str(h, ENV_HEADER);
    let now = chrono::Utc::now().timestamp();
    if token.starts_with(tokens::RUN_TOKEN_PREFIX) {
        // Signature and claims verified once per token (cached by its exact bytes); expiry is
        // checked on every call, and the run's liveness just below.
        let v = state.gateway.verified().run_token(token, now)?;
        let (c, project) = (&v.claims, v.project.clone());
        // A token bound to a run works only while the run is alive.
        if let Some(run_id) = c.run_id
            && !run_is_live(state, &project, run_id).await?
        {
            return Err(Error::new(ErrorCode::AuthInvalid, "invalid credential"));
        }
        // Headers may repeat the token's identity but never change it.
        if agent_h.is_some_and(|a| a != c.agent) || env_h.is_some_and(|e| e != c.environment) {
            return Err(Error::new(
                ErrorCode::AuthForbidden,
                "this credential is bound to another agent or environment",
            ));
        }
        let caller = Caller {
            project,
            agent: c.agent.clone(),
            run_id: c.run_id,
            environment: c.environment.clone(),
            mode: c.mode,
        };
        return Ok((caller, v.cred.clone()));
    }
    if token.starts_with("awk.") {
        let (Some(agent), Some(env)) = (agent_h, env_h) else {
            return Err(Error::new(
                ErrorCode::AuthInvalid,
                "an API key needs the X-Awooop-Agent and X-Awooop-Environment headers",
            ));
        };
        if !tokens::slug_ok(agent) || !tokens::slug_ok(env) {
            return Err(Error::new(
                ErrorCode::AuthInvalid,
                "X-Awooop-Agent and X-Awooop-Environment must be slugs",
            ));
        }
        let (project, binding) = verify_api_key_cached(state, token).await?;
        // The headers only choose among the key's bindings; they never widen them.
        if !binding.allows(agent, env) {
            return Err(Error::new(
                ErrorCode::AuthForbidden,
                "this API key is not bound to that agent and environment",
            ));
        }
        let caller = Caller {
            project,
            agent: agent.into(),
            run_id: None,
            environment: env.into(),
            mode: None,
        };
        return Ok((caller, tokens::credential_digest(&[token, agent, env])));
    }
    Err(Error::new(ErrorCode::AuthInvalid, "invalid credential"))
}

/// Whether the run a token is bound to exists in its project and is not terminal. The verdict
/// is cached for the gateway's `run_liveness_ttl` (a run that ends stops its token within it;
/// with a zero TTL, at once). The lookup runs in a task of its own (the cache's), so a request's
/// future holds no transaction (see `post_mcp`).
async fn run_is_live(state: &McpState, project: &ProjectId, run_id: uuid::Uuid) -> Result<bool> {
    let live = state
        .runs
        .get(&run_id, || {
            let (db, project) = (state.db.clone(), project.clone());
            awooop_store::tenancy::scope(project, async move {
                let mut tx = db.tenant().await?;
                let s: Option<String> =
                    sqlx::query_scalar("SELECT state FROM runs WHERE run_id = $1")
                        .bind(run_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(
                    s.and_then(|s| awooop_core::run_state::RunState::parse(&s).ok())
                        .is_some_and(|s| !s.is_terminal()),
                )
            })
        })
        .await
        .map_err(Error::unshare)?;
    Ok(*live)
}

/// API keys are verified by the gateway (cached; a revocation notifies and takes effect at
/// once, see `Gateway::api_key`); only runner keys call tools.
async fn verify_api_key_cached(
    state: &McpState,
    token: &str,
) -> Result<(ProjectId, auth::KeyBinding)> {
    match state.gateway.api_key(token).await? {
        (project, Some(b)) => Ok((project, b)),
        (_, None) => Err(Error::new(
            ErrorCode::AuthForbidden,
            "this action needs the 'runner' role",
        )),
    }
}

async fn post_mcp(State(state): State<McpState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    if let Some(origin) = header_str(h, header::ORIGIN.as_str())
        && !state.allowed_origins.iter().any(|o| o == origin)
    {
        return transport_error(
            StatusCode::FORBIDDEN,
            &Error::new(ErrorCode::AuthForbidden, "origin not allowed"),
        );
    }
    let (caller, cred) = match authenticate(&state, h).await {
        Ok(x) => x,
        Err(e) => {
            let mut r = transport_error(crate::status_of(e.code), &e);
            if crate::status_of(e.code) == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
    };
    // The transport requires `Content-Type: application/json` on every POST.
    if let Err(e) = super::guard::require_json(h) {
        return transport_error(crate::status_of(e.code), &e);
    }
    let bytes: Bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return transport_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &Error::new(ErrorCode::ReqTooLarge, "request body too large"),
            );
        }
    };
    let msg = match server::parse(&bytes) {
        Ok(m) => m,
        Err(body) => return json_response(StatusCode::BAD_REQUEST, &body),
    };
    let trace = header_str(h, "traceparent")
        .and_then(|t| TraceContext::from_traceparent(t).ok())
        .map(|t| t.child())
        .unwrap_or_else(TraceContext::generate);
    let keys = state.gateway.keys();
    let now = chrono::Utc::now().timestamp();
    if let Incoming::Request { id, method, params } = &msg
        && method == "initialize"
    {
        let version = server::negotiate(params.get("protocolVersion").and_then(Value::as_str));
        let sid = tokens::mint_session(
            &keys.session,
            &cred,
            version,
            now,
            state.session_ttl_seconds,
        );
        let mut r = json_response(
            StatusCode::OK,
            &server::rpc_result(id.clone(), server::initialize_result(version)),
        );
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    // Everything after initialize belongs to a session.
    let Some(sid) = header_str(h, SESSION_HEADER) else {
        return transport_error(
            StatusCode::BAD_REQUEST,
            &Error::new(
                ErrorCode::McpSession,
                "missing Mcp-Session-Id: initialize first",
            ),
        );
    };
    if let Err(e) = state.gateway.verified().session(sid, &cred, now) {
        return transport_error(StatusCode::NOT_FOUND, &e);
    }
    if let Some(v) = header_str(h, VERSION_HEADER)
        && !server::is_supported(v)
    {
        return transport_error(
            StatusCode::BAD_REQUEST,
            &Error::new(ErrorCode::McpProtocol, "unsupported MCP-Protocol-Version"),
        );
    }
    match msg {
        Incoming::Request { id, method, params } => {
            let body =
                server::dispatch_text(&state.gateway, &caller, id, &method, params, &trace).await;
            let mut r = text_response(StatusCode::OK, body);
            // The trace the call ran under (its audit row's and the upstream's), so the access
            // log and the client name the same one instead of a second, unrelated id.
            if let Ok(v) = HeaderValue::from_str(&trace.trace_id) {
                r.headers_mut().insert(crate::access_log::TRACE_HEADER, v);
            }
            r
        }
        Incoming::Notification { .. } | Incoming::Response => StatusCode::ACCEPTED.into_response(),
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, Fut>(_: impl FnOnce(A, B) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// axum allocates every request's handler future and moves it into place, so its size is
    /// paid per request. An `async fn` future is as large as its largest await point: cold
    /// paths awaited inline (a PostgreSQL transaction for a run or API key lookup, a snapshot
    /// reload, an approval check) made it 33,408 bytes in a release build (12,576 in the test
    /// build), and copying and allocating it cost several per cent of the gateway's CPU per
    /// call. They are boxed now, or run in a task of their own (the run and API key lookups,
    /// the snapshot load: `TtlCache` loads): 4,504 bytes.
    #[test]
    fn the_request_future_stays_small() {
        let n = future_size(super::post_mcp);
        assert!(n <= 8 * 1024, "the /mcp request future is {n} bytes");
    }
}
