//! The HTTP edge of the hub: provider webhooks and the API channel.
//!
//! * `POST /v1/webhooks/{project}/{channel}`: Telegram, LINE and Slack (the provider is the
//!   channel's, from the active Channel contract). The only routes meant to be reachable from
//!   the internet (the chart's Ingress/HTTPRoute expose `/v1/webhooks/` alone).
//! * `POST /v1/platform/conversations/{channel}/events`: the API channel, with a project API key
//!   (role `runner`).

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::normalize::{self, Normalized, Parsed};
use super::writer::{Item, ItemOutcome, Job, WriteError};
use super::{Hub, ResolvedChannel, Route, verify};
use awooop_contracts::ChannelProvider;
use awooop_control::MigrationMode;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::redact::Redactor;
use awooop_runtime::outbound::ReplyTo;
use awooop_runtime::{CreateRun, TraceContext};
use awooop_store::audit::{self, Entry};
use awooop_store::auth::{self, Actor, Role};
use awooop_store::tenancy::{self, ProjectId};

/// The hub's routes, with their own state; merged into the platform router.
pub fn routes(hub: Hub) -> Router {
    Router::new()
        .route("/v1/webhooks/{project}/{channel}", post(webhook))
        .route(
            "/v1/platform/conversations/{channel}/events",
            post(api_event),
        )
        .with_state(hub)
}

fn not_found() -> Error {
    Error::new(ErrorCode::ChannelNotFound, "no such channel")
}

async fn webhook(
    State(hub): State<Hub>,
    Path((project, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(project) = ProjectId::parse(&project) else {
        return not_found().into_response();
    };
    tenancy::scope(project.clone(), async move {
        match webhook_in_scope(&hub, &project, &channel, &headers, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    })
    .await
}

/// Refuse a request before anything of its body is kept: audit row with the code (and only
/// the provider and size), metric, coded error.
async fn refuse(hub: &Hub, ch: &ResolvedChannel, bytes: usize, e: Error) -> Error {
    let actor = format!("channel:{}", ch.name());
    let provider = ch.provider().as_str();
    hub.metrics().refused(provider, e.code.as_str());
    hub.metrics().inbound(provider, "rejected", 1);
    // Anyone can post to a webhook URL: at most one audit row per channel and code per window.
    let audited =
        tenancy::current().is_some_and(|p| hub.audit_refusal(&p, ch.name(), e.code.as_str()));
    if !audited {
        hub.metrics().unaudited(provider, e.code.as_str());
        return e;
    }
    audit::record_detached(
        hub.control().db(),
        Entry::denied(
            &actor,
            "channel.webhook",
            ch.name().to_string(),
            e.code.as_str(),
            json!({"provider": provider, "bytes": bytes}),
        ),
    )
    .await;
    e
}

async fn read_body(
    hub: &Hub,
    ch: &ResolvedChannel,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes_alias::Bytes> {
    let limit = hub.config().max_body_bytes;
    let too_large = || {
        Error::new(
            ErrorCode::ChannelBodyTooLarge,
            format!("webhook body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refuse(hub, ch, declared.unwrap_or(0), too_large()).await);
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(_) => Err(refuse(hub, ch, limit + 1, too_large()).await),
    }
}

mod bytes_alias {
    pub use axum::body::Bytes;
}

async fn webhook_in_scope(
    hub: &Hub,
    project: &ProjectId,
    channel: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let ch = hub.channel(project, channel).await?;
    let provider = ch.provider();
    if provider == ChannelProvider::Api {
        // API channels take events with an API key on /v1/platform/conversations/.
        return Err(not_found());
    }
    let body = read_body(hub, &ch, headers, body).await?;
    let secret = match &ch.verify_secret {
        Some(s) => s.clone(),
        None => return Err(refuse(hub, &ch, body.len(), super::credential_error()).await),
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify::verify(provider, secret.expose(), headers, &body, now) {
        return Err(refuse(hub, &ch, body.len(), e).await);
    }
    let retry = headers.contains_key("x-slack-retry-num");
    let parsed = match normalize::parse(provider, &body, retry) {
        Ok(p) => p,
        Err(e) => return Err(refuse(hub, &ch, body.len(), e).await),
    };
    if let Some(challenge) = parsed.challenge {
        return Ok(axum::Json(json!({"challenge": challenge})).into_response());
    }
    let actor = Actor {
        principal: format!("channel:{}", ch.name()),
        roles: vec![Role::Runner],
        admin: false,
    };
    let outcome = accept(hub, project, &ch, &actor, parsed, &body).await?;
    if let Some(url) = outcome.forward.clone() {
        return forward(hub, project, &ch, &url, headers, body, &outcome).await;
    }
    Ok(outcome.response())
}

/// What [`accept`] did with a verified body.
pub struct Accepted {
    pub events: Vec<Value>,
    pub ignored: Vec<Value>,
    /// Mirror mode: forward the webhook to this existing handler.
    pub forward: Option<String>,
}

impl Accepted {
    fn response(&self) -> Response {
        (
            StatusCode::OK,
            axum::Json(json!({"events": self.events, "ignored": self.ignored})),
        )
            .into_response()
    }
}

fn idempotency_key(channel: &str, external_id: &str) -> String {
    let k = format!("ch.{channel}.{external_id}");
    if awooop_runtime::valid_idempotency_key(&k) {
        k
    } else {
        format!("ch.{}", hex::encode(Sha256::digest(k.as_bytes())))
    }
}

/// Store verified events and queue their runs, in one tenant transaction (group-committed
/// with concurrent webhooks of the same project, see [`super::writer`]).
pub async fn accept(
    hub: &Hub,
    project: &ProjectId,
    ch: &ResolvedChannel,
    actor: &Actor,
    parsed: Parsed,
    body: &[u8],
) -> Result<Accepted> {
    let provider = ch.provider().as_str();
    let metrics = hub.metrics();
    let body_sha256 = hex::encode(Sha256::digest(body));
    let mut ignored = Vec::new();
    let mut denials: Vec<(ErrorCode, Value)> = Vec::new();
    for kind in &parsed.unsupported {
        denials.push((
            ErrorCode::ChannelUnsupportedEvent,
            json!({"provider": provider, "event_type": kind}),
        ));
        ignored
            .push(json!({"code": ErrorCode::ChannelUnsupportedEvent.as_str(), "event_type": kind}));
    }
    let mut kept: Vec<Normalized> = Vec::new();
    for e in parsed.events {
        if ch.sender_allowed(&e) {
            kept.push(e);
        } else {
            denials.push((
                ErrorCode::ChannelSenderNotAllowed,
                json!({"provider": provider, "external_id": e.external_id}),
            ));
            ignored.push(json!({"code": ErrorCode::ChannelSenderNotAllowed.as_str(), "external_id": e.external_id}));
        }
    }
    // Redaction and ids do not depend on the basis: once per request.
    let redactor = Redactor::global();
    let texts: Vec<Option<String>> = kept
        .iter()
        .map(|e| {
            e.text
                .as_deref()
                .map(|t| redactor.redact_str(t).into_owned())
        })
        .collect();
    let ids: Vec<(Uuid, TraceContext)> = kept
        .iter()
        .map(|_| (Uuid::now_v7(), TraceContext::generate()))
        .collect();
    // Storing the events and handing the stored clicks to their handler run in a task of its
    // own: a queued job is committed by the writer whether or not anyone still waits for it,
    // and a redelivery of a committed event is a duplicate that never reaches the handler
    // again, so a webhook dropped in between (the provider's timeout, a sender hanging up on
    // purpose) would leave a stored approval click undecided for good. The answer still waits.
    let delivery = Delivery {
        project: project.clone(),
        ch: ch.clone(),
        actor: actor.clone(),
        kept,
        texts,
        ids,
        body_sha256,
        denials,
    };
    let hub_ = hub.clone();
    let stored = tenancy::spawn_in(project.clone(), async move {
        let r = store_and_handle(&hub_, &delivery).await;
        r.map(|(job, outcomes)| (job, outcomes, delivery))
    });
    let (job, outcomes, delivery) = stored.await.map_err(|_| {
        Error::new(
            ErrorCode::Internal,
            "the task storing the webhook's events stopped",
        )
    })??;
    let Delivery {
        kept, ids, denials, ..
    } = delivery;
    let mut events = Vec::with_capacity(kept.len());
    let (mut accepted_n, mut dup_n) = (0u64, 0u64);
    for (i, e) in kept.iter().enumerate() {
        let out = outcomes.get(i).copied().unwrap_or_default();
        if !out.inserted {
            dup_n += 1;
            events.push(json!({"external_id": e.external_id, "duplicate": true}));
            continue;
        }
        accepted_n += 1;
        let (event_id, trace) = &ids[i];
        events.push(json!({
            "external_id": e.external_id, "event_id": event_id, "run_id": out.run_id,
            "kind": e.kind.as_str(), "duplicate": false, "trace_id": trace.trace_id,
        }));
    }
    metrics.inbound(provider, "accepted", accepted_n);
    metrics.inbound(provider, "duplicate", dup_n);
    metrics.inbound(provider, "ignored", denials.len() as u64);
    Ok(Accepted {
        events,
        ignored,
        forward: if job.mirror {
            ch.channel.forward_to.clone()
        } else {
            None
        },
    })
}

/// A verified webhook's kept events with what was derived from them once per request, owned
/// so that the task storing them can outlive the request (see [`accept`]).
struct Delivery {
    project: ProjectId,
    ch: ResolvedChannel,
    actor: Actor,
    kept: Vec<Normalized>,
    /// The events' texts, redacted.
    texts: Vec<Option<String>>,
    /// Each kept event's id and trace.
    ids: Vec<(Uuid, TraceContext)>,
    body_sha256: String,
    /// Refused events (unsupported kinds, senders not allowed): audited with the job.
    denials: Vec<(ErrorCode, Value)>,
}

/// Store the kept events (and queue their runs) through the hub's writer, then hand the
/// stored events routed to the handler (approval clicks) to it. Runs in a task of its own
/// (see [`accept`]).
async fn store_and_handle(hub: &Hub, d: &Delivery) -> Result<(JobSummary, Vec<ItemOutcome>)> {
    let Delivery {
        project,
        ch,
        kept,
        ids,
        ..
    } = d;
    // Prepared on a cached basis (mode, active revisions) that the write transaction checks;
    // when it changed in between, the cache is dropped and the runs prepared again.
    let mut attempt = 0;
    let (job, outcomes) = loop {
        attempt += 1;
        let job = prepare_job(hub, d).await?;
        let summary = JobSummary::of(&job);
        match hub.writer().submit(job).await {
            Ok(o) => break (summary, o),
            Err(WriteError::Stale) if attempt < 3 => {
                hub.invalidate_project(project);
            }
            Err(WriteError::Stale) => {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "the project's configuration changed while the events were stored; retry",
                ));
            }
            Err(WriteError::Failed(e)) => return Err(e),
        }
    };
    for (i, e) in kept.iter().enumerate() {
        let inserted = outcomes.get(i).is_some_and(|o| o.inserted);
        if inserted && job.routes[i] == Route::Handler {
            let event_id = ids[i].0;
            if let Err(err) = hub
                .actions()
                .handle(project, &ch.channel, event_id, e)
                .await
            {
                tracing::warn!(code = err.code.as_str(), %event_id, "postback handler failed");
            }
        }
    }
    Ok((job, outcomes))
}

/// What [`accept`] needs back of a submitted job.
struct JobSummary {
    routes: Vec<Route>,
    mirror: bool,
}

impl JobSummary {
    fn of(job: &Job) -> Self {
        Self {
            routes: job.items.iter().map(|i| i.route).collect(),
            mirror: job.mirrored,
        }
    }
}

/// Prepare the runs of the kept events on the project's (cached) run basis: no I/O unless the
/// basis has to be read.
async fn prepare_job(hub: &Hub, d: &Delivery) -> Result<Job> {
    let Delivery {
        project,
        ch,
        actor,
        kept,
        texts,
        ids,
        body_sha256,
        denials,
    } = d;
    let provider = ch.provider().as_str();
    let agent = ch.channel.agent.as_str();
    let basis = match hub.basis(project, agent).await {
        Ok(b) => Ok(b),
        Err(e)
            if matches!(
                e.code,
                ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::TenantMissing
            ) =>
        {
            return Err(e);
        }
        // A configuration problem (agent inactive): events are stored without a run.
        Err(e) => Err(e),
    };
    let mode = match &basis {
        Ok(b) => b.mode(),
        Err(_) => hub.control().mode().await?,
    };
    let selected_all = kept.iter().all(|e| ch.canary_selected(&e.conversation));
    let mirror = ch.channel.forward_to.is_some()
        && (mode == MigrationMode::Shadow
            || (mode == MigrationMode::Canary && (!selected_all || kept.is_empty())));
    let mut items = Vec::with_capacity(kept.len());
    for (i, event) in kept.iter().enumerate() {
        let route = hub.actions().route(&ch.channel, event);
        let shadow = mode == MigrationMode::Shadow
            || (mode == MigrationMode::Canary && !ch.canary_selected(&event.conversation));
        let (event_id, trace) = ids[i].clone();
        let text = texts[i].clone();
        let (prepared, prepare_error) = if route == Route::Run {
            match &basis {
                Err(e) => (None, Some(Error::new(e.code, e.message.clone()))),
                Ok(b) => {
                    let req = CreateRun {
                        agent: agent.to_string(),
                        input: json!({
                            "channel": ch.name(), "provider": provider, "kind": event.kind.as_str(),
                            "conversation": event.conversation, "sender": event.sender,
                            "text": text, "event_id": event_id,
                        }),
                        mode: shadow.then(|| MigrationMode::Shadow.as_str().to_string()),
                        reply_to: Some(ReplyTo {
                            channel: ch.name().to_string(),
                            conversation: event.conversation.clone(),
                        }),
                    };
                    let key = idempotency_key(ch.name(), &event.external_id);
                    match hub
                        .runs()
                        .prepare_on(b, actor, req, Some(&key), trace.clone())
                    {
                        Ok(p) => (Some(p), None),
                        Err(e)
                            if matches!(
                                e.code,
                                ErrorCode::Unavailable
                                    | ErrorCode::Internal
                                    | ErrorCode::TenantMissing
                            ) =>
                        {
                            return Err(e);
                        }
                        // Input too large: stored without a run, the reason audited, so the
                        // provider stops retrying.
                        Err(e) => (None, Some(e)),
                    }
                }
            }
        } else {
            (None, None)
        };
        items.push(Item {
            event: event.clone(),
            event_id,
            trace,
            text,
            route,
            progress: !shadow && ch.may_send(mode, &event.conversation),
            prepared,
            prepare_error,
        });
    }
    Ok(Job {
        project: project.clone(),
        channel: ch.name().to_string(),
        provider,
        progress_interval: ch.channel.progress_interval_seconds,
        actor: actor.principal.clone(),
        body_sha256: body_sha256.to_string(),
        mirrored: mirror,
        basis: basis.ok(),
        items,
        denials: denials.iter().map(|(c, v)| (*c, v.clone())).collect(),
    })
}

/// Headers forwarded unchanged to an existing handler (its own verification needs them).
fn forwarded(name: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name.starts_with("x-telegram-")
        || name.starts_with("x-line-")
        || name.starts_with("x-slack-")
}

/// Mirror mode: hand the verified webhook to the existing handler and answer with its answer.
/// The events are already stored; a failure is audited and answered 502 so the provider
/// retries (the retry is a duplicate here, and reaches the handler again).
async fn forward(
    hub: &Hub,
    project: &ProjectId,
    ch: &ResolvedChannel,
    url: &str,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    _accepted: &Accepted,
) -> Result<Response> {
    let started = Instant::now();
    let allowed = url.starts_with("https://") || hub.config().allow_insecure_forward;
    let client = if allowed {
        hub.forward_client(project.as_str(), url).await
    } else {
        Err("forward_to must be an https:// URL".to_string())
    };
    let res = if let Ok(client) = &client {
        let mut req = client.post(url).body(body.clone());
        for (k, v) in headers {
            if forwarded(k.as_str()) {
                req = req.header(k.as_str(), v.as_bytes());
            }
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status();
                let ctype = r.headers().get(http::header::CONTENT_TYPE).cloned();
                match r.bytes().await {
                    Ok(b) if !status.is_server_error() => Ok((status, ctype, b)),
                    Ok(_) => Err(format!("existing handler answered {status}")),
                    Err(_) => Err("existing handler's answer was cut off".to_string()),
                }
            }
            Err(e) => Err(
                if let Some(why) = awooop_policy::egress::refused_by_policy(&e) {
                    why.to_string()
                } else if e.is_timeout() {
                    "existing handler timed out".into()
                } else {
                    "existing handler unreachable".into()
                },
            ),
        }
    } else {
        Err(client.err().unwrap_or_default())
    };
    match res {
        Ok((status, ctype, b)) => {
            tracing::debug!(
                channel = ch.name(),
                ms = started.elapsed().as_millis() as u64,
                "forwarded to existing handler"
            );
            let mut resp = Response::builder().status(status.as_u16());
            if let Some(c) = ctype {
                resp = resp.header(http::header::CONTENT_TYPE, c);
            }
            Ok(resp
                .body(Body::from(b))
                .unwrap_or_else(|_| StatusCode::OK.into_response()))
        }
        Err(reason) => {
            let e = Error::new(
                ErrorCode::ChannelForwardFailed,
                "the existing handler did not answer; the event is stored",
            );
            let actor = format!("channel:{}", ch.name());
            audit::record_detached(
                hub.control().db(),
                Entry::denied(
                    &actor,
                    "channel.forward",
                    ch.name().to_string(),
                    e.code.as_str(),
                    json!({"reason": reason}),
                ),
            )
            .await;
            Err(e)
        }
    }
}

/// `POST /v1/platform/conversations/{channel}/events` with a project API key.
async fn api_event(
    State(hub): State<Hub>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let token = match headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        Some(t) => t.trim().to_string(),
        None => {
            return Error::new(ErrorCode::AuthMissing, "an API key is required").into_response();
        }
    };
    let (project, actor, binding) =
        match auth::verify_api_key_bound(hub.control().db(), &token).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    tenancy::scope(project.clone(), async move {
        let res = async {
            actor.require(Role::Runner)?;
            let ch = hub.channel(&project, &channel).await?;
            if ch.provider() != ChannelProvider::Api {
                return Err(not_found());
            }
            // A runner key starts runs only for the agents it is bound to, here as on
            // `POST /v1/platform/runs`: the channel's agent must be one of them.
            if let Some(b) = &binding
                && !b.allows_agent(ch.channel.agent.as_str())
            {
                return Err(Error::new(
                    ErrorCode::AuthForbidden,
                    "this API key is not bound to the channel's agent",
                ));
            }
            let body = read_body(&hub, &ch, &headers, body).await?;
            let parsed = normalize::parse(ChannelProvider::Api, &body, false)?;
            if let Some(e) = parsed.events.first()
                && !ch.sender_allowed(e)
            {
                return Err(refuse(
                    &hub,
                    &ch,
                    body.len(),
                    Error::new(
                        ErrorCode::ChannelSenderNotAllowed,
                        "sender not allowed on this channel",
                    ),
                )
                .await);
            }
            let a = accept(&hub, &project, &ch, &actor, parsed, &body).await?;
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"events": a.events})),
            )
                .into_response())
        }
        .await;
        res.unwrap_or_else(|e: Error| e.into_response())
    })
    .await
}
