//! In-process doubles of the chat providers for tests and `awooop bench channels`: one axum
//! server on 127.0.0.1:0 speaking the Telegram Bot API (`/telegram/bot{token}/{method}`), the
//! LINE Messaging API (`/line/v2/bot/...`) and the Slack Web API (`/slack/{method}`) JSON, plus
//! an existing bot handler for mirror mode (`/legacy`). It records every request and serves
//! scripted faults (429 with the provider's retry hint, 5xx, rejections) before answering
//! normally. Point [`awooop_channels::ProviderUrls`] at [`ProviderDouble::urls`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use awooop_channels::ProviderUrls;

/// A scripted answer, served to the next request of its API before normal answers resume.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with the provider's hint: Telegram `parameters.retry_after`, Slack/LINE
    /// `Retry-After` header (seconds).
    RateLimited(u64),
    /// 500.
    ServerError,
    /// A permanent rejection (Telegram 400 `ok: false`, LINE 400, Slack `ok: false`).
    Reject,
    /// The request is carried out but its answer is lost (500): what makes LINE's
    /// `X-Line-Retry-Key` necessary. A retry with the same key then gets LINE's 409.
    LostAnswer,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    /// `telegram`, `line`, `slack` or `legacy`.
    pub api: String,
    /// Telegram/Slack method (`sendMessage`, `chat.update`), LINE path tail (`message/push`).
    pub method: String,
    /// The credential presented (Telegram: from the path; LINE/Slack: bearer), for checks.
    pub token: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    faults: std::collections::HashMap<String, VecDeque<Fault>>,
    requests: Vec<Recorded>,
    next_id: i64,
    legacy_status: Option<u16>,
    /// LINE push requests carried out, by `X-Line-Retry-Key` (request id).
    line_retry_keys: std::collections::HashMap<String, String>,
    /// Messages the providers delivered to users (not counting refused or repeated requests).
    delivered: Vec<Recorded>,
}

pub struct ProviderDouble {
    pub addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProviderDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

impl ProviderDouble {
    pub async fn start() -> std::io::Result<Self> {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = Router::new()
            .route("/telegram/{bot}/{method}", post(telegram))
            .route("/line/v2/bot/message/{op}", post(line_message))
            .route("/line/v2/bot/chat/loading/start", post(line_loading))
            .route("/slack/{method}", post(slack))
            .route("/legacy", post(legacy))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
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

    pub fn urls(&self) -> ProviderUrls {
        let b = self.base_url();
        ProviderUrls {
            telegram: format!("{b}/telegram"),
            line: format!("{b}/line"),
            slack: format!("{b}/slack"),
        }
    }

    /// The existing-handler URL (mirror mode).
    pub fn legacy_url(&self) -> String {
        format!("{}/legacy", self.base_url())
    }

    /// Queue faults for `api` (`telegram`, `line`, `slack`).
    pub fn fault(&self, api: &str, faults: impl IntoIterator<Item = Fault>) {
        self.inner
            .lock()
            .expect("double lock")
            .faults
            .entry(api.to_string())
            .or_default()
            .extend(faults);
    }

    /// Make the existing handler answer with this status (default 200).
    pub fn legacy_status(&self, status: u16) {
        self.inner.lock().expect("double lock").legacy_status = Some(status);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("double lock").requests.clone()
    }

    /// Requests the provider carried out (a message reached the chat, a status was edited):
    /// faults other than [`Fault::LostAnswer`] and LINE's repeated retry keys excluded.
    pub fn delivered(&self, api: &str) -> Vec<Recorded> {
        self.inner
            .lock()
            .expect("double lock")
            .delivered
            .iter()
            .filter(|r| r.api == api)
            .cloned()
            .collect()
    }

    /// Requests of one API and method.
    pub fn calls(&self, api: &str, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.api == api && r.method == method)
            .collect()
    }
}

fn record(
    s: &Arc<Mutex<Inner>>,
    api: &str,
    method: &str,
    token: Option<String>,
    h: &HeaderMap,
    body: &Bytes,
) -> (Option<Fault>, i64) {
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let headers = h
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut g = s.lock().expect("double lock");
    g.requests.push(Recorded {
        api: api.into(),
        method: method.into(),
        token,
        headers,
        body,
        at: Instant::now(),
    });
    let fault = g.faults.get_mut(api).and_then(VecDeque::pop_front);
    g.next_id += 1;
    (fault, g.next_id)
}

fn delivered(s: &Arc<Mutex<Inner>>) {
    let mut g = s.lock().expect("double lock");
    if let Some(last) = g.requests.last().cloned() {
        g.delivered.push(last);
    }
}

fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

async fn telegram(
    s: Shared,
    Path((bot, method)): Path<(String, String)>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let token = bot.strip_prefix("bot").map(str::to_string);
    let (fault, id) = record(&s, "telegram", &method, token, &h, &body);
    match fault {
        Some(Fault::RateLimited(secs)) => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"ok": false, "error_code": 429,
                "description": format!("Too Many Requests: retry after {secs}"),
                "parameters": {"retry_after": secs}})),
        )
            .into_response(),
        Some(Fault::ServerError) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"ok": false, "error_code": 500, "description": "Internal Server Error"})),
        )
            .into_response(),
        Some(Fault::Reject) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"})),
        )
            .into_response(),
        Some(Fault::LostAnswer) => {
            delivered(&s);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"ok": false, "error_code": 500, "description": "Internal Server Error"})),
            )
                .into_response()
        }
        None => {
            delivered(&s);
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let result = match method.as_str() {
                "sendMessage" | "editMessageText" => json!({
                    "message_id": if method == "editMessageText" { req["message_id"].clone() } else { json!(id) },
                    "date": 1764288000, "chat": {"id": req["chat_id"], "type": "private"},
                    "text": req["text"],
                }),
                _ => json!(true),
            };
            axum::Json(json!({"ok": true, "result": result})).into_response()
        }
    }
}

fn retry_after(secs: u64, body: Value) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [("retry-after", secs.to_string())],
        axum::Json(body),
    )
        .into_response()
}

async fn line_message(s: Shared, Path(op): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    let (fault, id) = record(&s, "line", &format!("message/{op}"), bearer(&h), &h, &body);
    // The Messaging API carries out a push with a given X-Line-Retry-Key once; a repeat
    // answers 409 with the id of the accepted request.
    let retry_key = h
        .get("x-line-retry-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(k) = &retry_key
        && let Some(accepted) = s
            .lock()
            .expect("double lock")
            .line_retry_keys
            .get(k)
            .cloned()
    {
        return (
            StatusCode::CONFLICT,
            [("x-line-accepted-request-id", accepted)],
            axum::Json(json!({"message": "The retry key is already accepted", "sentMessages": []})),
        )
            .into_response();
    }
    let accept = |s: &Arc<Mutex<Inner>>| {
        delivered(s);
        if let Some(k) = &retry_key {
            s.lock()
                .expect("double lock")
                .line_retry_keys
                .insert(k.clone(), format!("req-{id}"));
        }
    };
    match fault {
        Some(Fault::RateLimited(secs)) => retry_after(
            secs,
            json!({"message": "The API rate limit has been exceeded. Try again later."}),
        ),
        Some(Fault::ServerError) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"message": "Internal error"})),
        )
            .into_response(),
        Some(Fault::LostAnswer) => {
            accept(&s);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"message": "Internal error"})),
            )
                .into_response()
        }
        Some(Fault::Reject) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Invalid reply token"})),
        )
            .into_response(),
        None => {
            accept(&s);
            let n = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["messages"].as_array().map(Vec::len))
                .unwrap_or(0);
            let sent: Vec<Value> = (0..n)
                .map(|i| json!({"id": format!("{id}{i}"), "quoteToken": "q"}))
                .collect();
            axum::Json(json!({"sentMessages": sent})).into_response()
        }
    }
}

async fn line_loading(s: Shared, h: HeaderMap, body: Bytes) -> Response {
    let _ = record(&s, "line", "chat/loading/start", bearer(&h), &h, &body);
    delivered(&s);
    (StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()
}

async fn slack(s: Shared, Path(method): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    let (fault, id) = record(&s, "slack", &method, bearer(&h), &h, &body);
    match fault {
        Some(Fault::RateLimited(secs)) => {
            retry_after(secs, json!({"ok": false, "error": "ratelimited"}))
        }
        Some(Fault::ServerError) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "upstream error").into_response()
        }
        Some(Fault::Reject) => {
            axum::Json(json!({"ok": false, "error": "channel_not_found"})).into_response()
        }
        Some(Fault::LostAnswer) => {
            delivered(&s);
            (StatusCode::INTERNAL_SERVER_ERROR, "upstream error").into_response()
        }
        None => {
            delivered(&s);
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let ts = if method == "chat.update" {
                req["ts"].clone()
            } else {
                json!(format!("1764288000.{id:06}"))
            };
            axum::Json(json!({"ok": true, "channel": req["channel"], "ts": ts})).into_response()
        }
    }
}

async fn legacy(s: Shared, h: HeaderMap, body: Bytes) -> Response {
    let _ = record(&s, "legacy", "webhook", None, &h, &body);
    let status = s.lock().expect("double lock").legacy_status.unwrap_or(200);
    // An existing Telegram bot may answer the webhook with a method call.
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(
            json!({"method": "sendMessage", "chat_id": 1, "text": "handled by the existing bot"}),
        ),
    )
        .into_response()
}
