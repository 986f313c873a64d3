//! `awooop-client`: the typed client of AwoooP's platform API for downstream products.
//!
//! Requests and responses are the server's own types ([`awooop_api`]), so a field the server
//! adds or renames breaks this crate's build, not a customer's run. See README.md for an
//! example. Covered: create a run (with an `Idempotency-Key`), get, list, cancel, approve a
//! waiting run, stream a run's events (Server-Sent Events, resumable), and the approvals
//! inbox (`GET /v1/platform/approvals`, `POST /v1/platform/approvals/{id}/decisions`).
//!
//! TLS: the workspace builds reqwest with rustls and no default crypto provider; the client
//! installs *ring* as the process default when the process has none yet.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

pub use awooop_api::{
    ApprovalDecision, CreateRun, ReplyTo, RunAccepted, RunDetail, RunEvent, RunEventKind, RunPage,
    RunView, StepView, TERMINAL_STATES,
};

/// What went wrong: the server's stable code when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body `{code, message, details}`.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Option<Value>,
    },
    /// The request did not reach the server or the answer was not what the API promises.
    #[error("transport: {0}")]
    Transport(String),
}

impl Error {
    /// The `E-…` code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::Transport(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Transport(e.to_string())
}

/// Filters of [`Client::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct ListRuns {
    pub state: Option<String>,
    pub agent: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A client bound to one platform URL and one credential (a project API key, or the admin
/// token plus a project).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    project: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8080`; `api_key` an `awk.{project}.…` key.
    pub fn new(base_url: &str, api_key: &str) -> Self {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: a provider is then installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            token: api_key.to_string(),
            project: None,
            http: reqwest::Client::new(),
        }
    }

    /// Act on `project` with the platform admin token (sends `X-Awooop-Project`).
    pub fn admin(base_url: &str, admin_token: &str, project: &str) -> Self {
        Self {
            project: Some(project.to_string()),
            ..Self::new(base_url, admin_token)
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(p) = &self.project {
            r = r.header("X-Awooop-Project", p);
        }
        r
    }

    async fn send<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T> {
        let resp = r.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(transport)
    }

    /// `POST /v1/platform/runs`. With an idempotency key, a retry of the same request returns
    /// the first run (`replayed: true`) instead of starting another.
    pub async fn create_run(
        &self,
        req: &CreateRun,
        idempotency_key: Option<&str>,
    ) -> Result<RunAccepted> {
        let mut r = self
            .req(reqwest::Method::POST, "/v1/platform/runs")
            .json(req);
        if let Some(k) = idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        self.send(r).await
    }

    /// `GET /v1/platform/runs/{id}`: the run and its journal.
    pub async fn get_run(&self, id: Uuid) -> Result<RunDetail> {
        self.send(self.req(reqwest::Method::GET, &format!("/v1/platform/runs/{id}")))
            .await
    }

    /// `GET /v1/platform/runs`: newest first, one page.
    pub async fn list_runs(&self, q: &ListRuns) -> Result<RunPage> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &q.state {
            query.push(("state", s.clone()));
        }
        if let Some(a) = &q.agent {
            query.push(("agent", a.clone()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &q.cursor {
            query.push(("cursor", c.clone()));
        }
        // The workspace builds reqwest without its `query` feature: encode here.
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        let path = if qs.is_empty() {
            "/v1/platform/runs".to_string()
        } else {
            format!("/v1/platform/runs?{}", qs.join("&"))
        };
        self.send(self.req(reqwest::Method::GET, &path)).await
    }

    /// `POST /v1/platform/runs/{id}/cancel`.
    pub async fn cancel_run(&self, id: Uuid) -> Result<RunView> {
        self.send(self.req(
            reqwest::Method::POST,
            &format!("/v1/platform/runs/{id}/cancel"),
        ))
        .await
    }

    /// `POST /v1/platform/runs/{id}/approval`: approve or reject a run waiting for approval.
    pub async fn approve_run(&self, id: Uuid, approved: bool) -> Result<RunView> {
        self.send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/platform/runs/{id}/approval"),
            )
            .json(&awooop_api::RunApproval { approved }),
        )
        .await
    }

    /// `GET /v1/platform/approvals`: the project's pending approvals.
    pub async fn list_approvals(&self) -> Result<Value> {
        self.send(self.req(reqwest::Method::GET, "/v1/platform/approvals"))
            .await
    }

    /// `POST /v1/platform/approvals/{id}/decisions`.
    pub async fn decide_approval(&self, id: &str, decision: &ApprovalDecision) -> Result<Value> {
        self.send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/platform/approvals/{id}/decisions"),
            )
            .json(decision),
        )
        .await
    }

    /// `GET /v1/platform/runs/{id}/events`: the run's events after `last_event_id` (all when
    /// `None`), then the live ones until the run has finished. To resume after a dropped
    /// connection, call again with the last `seq` seen.
    pub async fn events(
        &self,
        id: Uuid,
        last_event_id: Option<i64>,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<RunEvent>> + Send>>> {
        let mut r = self
            .req(
                reqwest::Method::GET,
                &format!("/v1/platform/runs/{id}/events"),
            )
            .header("Accept", "text/event-stream");
        if let Some(n) = last_event_id {
            r = r.header("Last-Event-ID", n.to_string());
        }
        let resp = r.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport)?;
            return Err(api_error(status.as_u16(), &bytes));
        }
        let parser = SseParser::default();
        let body = resp.bytes_stream();
        let s = futures::stream::unfold(
            (body, parser, VecDeque::<Result<RunEvent>>::new(), false),
            |(mut body, mut parser, mut ready, mut done)| async move {
                loop {
                    if let Some(e) = ready.pop_front() {
                        return Some((e, (body, parser, ready, done)));
                    }
                    if done {
                        return None;
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => ready.extend(parser.push(&chunk)),
                        Some(Err(e)) => {
                            done = true;
                            ready.push_back(Err(transport(e)));
                        }
                        None => done = true,
                    }
                }
            },
        );
        Ok(Box::pin(s))
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn api_error(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Error::Api {
            status,
            code: v["code"].as_str().unwrap_or("").to_string(),
            message: v["message"].as_str().unwrap_or("").to_string(),
            details: v.get("details").cloned().filter(|d| !d.is_null()),
        },
        Err(_) => Error::Api {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
            details: None,
        },
    }
}

/// An incremental `text/event-stream` parser: only `data:` lines matter (each message's data
/// is one [`RunEvent`] as JSON, which also carries the id and kind); comments (keep-alives),
/// `id:`, `event:` and `retry:` lines are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: String,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<RunEvent>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(serde_json::from_str(&self.data).map_err(transport));
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks_and_skips_keepalives() {
        let mut p = SseParser::default();
        let msg = "id: 1\nevent: created\ndata: {\"seq\":1,\"kind\":\"created\",\"data\":{},\"at\":\"2026-11-28T12:00:00Z\"}\n\n: keep-alive\n\n";
        let (a, b) = msg.split_at(30);
        assert!(p.push(a.as_bytes()).is_empty());
        let evs = p.push(b.as_bytes());
        assert_eq!(evs.len(), 1);
        let e = evs.into_iter().next().unwrap().unwrap();
        assert_eq!((e.seq, e.kind), (1, RunEventKind::Created));
    }

    #[test]
    fn api_errors_keep_the_code() {
        let e = api_error(404, br#"{"code":"E-RUN-001","message":"run not found"}"#);
        assert_eq!(e.code(), Some("E-RUN-001"));
    }
}
