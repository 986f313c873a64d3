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
use super::{Hub, ResolvedChannel, Route, store, verify};
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

fn provider_name(p: ChannelProvider) -> &'static str {
    match p {
        ChannelProvider::Telegram => "telegram",
        ChannelProvider::Line => "line",
        ChannelProvider::Slack => "slack",
        ChannelProvider::Api => "api",
        ChannelProvider::Email => "email",
    }
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
    let provider = provider_name(ch.provider());
    hub.metrics().refused(provider, e.code.as_str());
    hub.metrics().inbound(provider, "rejected", 1);
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

/// Store verified events and queue their runs, in one tenant transaction.
pub async fn accept(
    hub: &Hub,
    project: &ProjectId,
    ch: &ResolvedChannel,
    actor: &Actor,
    parsed: Parsed,
    body: &[u8],
) -> Result<Accepted> {
    let provider = provider_name(ch.provider());
    let metrics = hub.metrics();
    let body_sha256 = hex::encode(Sha256::digest(body));
    let mut ignored = Vec::new();
    let audit_actor = actor.principal.clone();
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
    let mode = hub.control().mode().await?;
    let selected_all = kept.iter().all(|e| ch.canary_selected(&e.conversation));
    let mirror = ch.channel.forward_to.is_some()
        && (mode == MigrationMode::Shadow
            || (mode == MigrationMode::Canary && (!selected_all || kept.is_empty())));

    // Prepare the runs (reads only) before the write transaction.
    struct Item {
        event: Normalized,
        event_id: Uuid,
        trace: TraceContext,
        text: Option<String>,
        route: Route,
        shadow: bool,
        prepared: Option<awooop_runtime::PreparedRun>,
        prepare_error: Option<Error>,
    }
    let redactor = Redactor::global();
    let mut items = Vec::with_capacity(kept.len());
    for event in kept {
        let route = hub.actions().route(&ch.channel, &event);
        let shadow = mode == MigrationMode::Shadow
            || (mode == MigrationMode::Canary && !ch.canary_selected(&event.conversation));
        let text = event
            .text
            .as_deref()
            .map(|t| redactor.redact_str(t).into_owned());
        let trace = TraceContext::generate();
        let event_id = Uuid::now_v7();
        let (prepared, prepare_error) = if route == Route::Run {
            let req = CreateRun {
                agent: ch.channel.agent.as_str().to_string(),
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
                .prepare(actor, req, Some(&key), trace.clone())
                .await
            {
                Ok(p) => (Some(p), None),
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::TenantMissing
                    ) =>
                {
                    return Err(e);
                }
                // A configuration problem (agent inactive, input too large): the event is
                // stored without a run and the reason audited, so the provider stops retrying.
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        items.push(Item {
            event,
            event_id,
            trace,
            text,
            route,
            shadow,
            prepared,
            prepare_error,
        });
    }

    let mut tx = hub.control().db().tenant().await?;
    let mut events = Vec::with_capacity(items.len());
    let mut handled = Vec::new();
    let (mut accepted_n, mut dup_n) = (0u64, 0u64);
    for it in &items {
        let inserted = store::insert_event(
            &mut tx,
            &store::NewEvent {
                project: project.as_str(),
                event_id: it.event_id,
                channel: ch.name(),
                provider,
                event: &it.event,
                text: it.text.as_deref(),
                body_sha256: &body_sha256,
                trace_id: &it.trace.trace_id,
                mirrored: mirror,
            },
        )
        .await?;
        if !inserted {
            dup_n += 1;
            events.push(json!({"external_id": it.event.external_id, "duplicate": true}));
            continue;
        }
        accepted_n += 1;
        let mut run_id = None;
        if let Some(p) = &it.prepared {
            let run = awooop_runtime::RunService::insert_prepared(&mut tx, p).await?;
            store::set_event_run(&mut tx, it.event_id, run.run_id).await?;
            let interval = ch.channel.progress_interval_seconds;
            if interval > 0 && !it.shadow && ch.may_send(mode, &it.event.conversation) {
                store::insert_progress(
                    &mut tx,
                    project.as_str(),
                    run.run_id,
                    ch.name(),
                    &it.event.conversation,
                    &run.trace_id,
                    interval,
                )
                .await?;
            }
            run_id = Some(run.run_id);
        }
        if let Some(e) = &it.prepare_error {
            audit::record(
                &mut tx,
                Entry {
                    trace_id: Some(it.trace.trace_id.clone()),
                    ..Entry::denied(
                        &audit_actor,
                        "channel.route",
                        it.event_id.to_string(),
                        e.code.as_str(),
                        json!({"provider": provider, "reason": e.message}),
                    )
                },
            )
            .await?;
        }
        if it.route == Route::Handler {
            handled.push(it);
        }
        events.push(json!({
            "external_id": it.event.external_id, "event_id": it.event_id, "run_id": run_id,
            "kind": it.event.kind.as_str(), "duplicate": false, "trace_id": it.trace.trace_id,
        }));
    }
    for (code, details) in &denials {
        audit::record(
            &mut tx,
            Entry::denied(
                &audit_actor,
                "channel.webhook",
                ch.name().to_string(),
                code.as_str(),
                details.clone(),
            ),
        )
        .await?;
    }
    tx.commit().await?;
    for it in handled {
        if let Err(e) = hub
            .actions()
            .handle(project, &ch.channel, it.event_id, &it.event)
            .await
        {
            tracing::warn!(code = e.code.as_str(), event_id = %it.event_id, "postback handler failed");
        }
    }
    metrics.inbound(provider, "accepted", accepted_n);
    metrics.inbound(provider, "duplicate", dup_n);
    metrics.inbound(provider, "ignored", denials.len() as u64);
    Ok(Accepted {
        events,
        ignored,
        forward: if mirror {
            ch.channel.forward_to.clone()
        } else {
            None
        },
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
