//! The outbound delivery worker: drains `outbound_messages` and keeps progress messages.
//!
//! * Claims with `FOR UPDATE SKIP LOCKED` and a lease (a crashed sender's messages come back
//!   after the lease), across tenants in the `delivery` scope; everything else re-enters the
//!   message's own tenant scope. A worker bound to one project (`awooop worker --project`, the
//!   operator's per-project worker pods) finds its due work in that project's tenant scope
//!   instead, so row-level security keeps it to its own project's messages: such a pod holds
//!   only its project's credentials, and another tenant's message claimed there failed for
//!   want of that tenant's send credential (a lost reply) after its text had passed through a
//!   pod of the wrong tenant.
//! * Before anything leaves: the channel must allow outbound, the project's mode must allow it
//!   (shadow never; canary only for selected conversations), and the text passes the audit
//!   redactor. Only validated output reaches `outbound_messages` (the runtime writes it from a
//!   `ValidatedOutput`).
//! * Parts are sent in order and counted (`parts_sent`), so a retry continues after the last
//!   delivered part: no duplicate message. LINE pushes carry `X-Line-Retry-Key`.
//! * 429 waits `retry_after` / `Retry-After`; 5xx and network errors back off exponentially;
//!   after `max_attempts` the message is `failed` with `E-CHANNEL-009`. Every attempt is a
//!   `channel_deliveries` row.
//! * Progress: runs started from a channel that are still running after the channel's
//!   `progress_interval_seconds` get one status message, edited in place at each interval.
//!   The progress row is locked while a status is sent and the reply first marks it done, so
//!   no status message can follow the reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::providers::{self, SendOutcome};
use super::store::{AttemptStatus, MessageStatus};
use super::{Hub, format, store};
use awooop_contracts::ChannelProvider;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::redact::Redactor;
use awooop_store::notify::{OUTBOUND_CHANNEL, project_notice_wakes};
use awooop_store::tenancy::{self, ProjectId};

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// How soon to look again when something is due that this worker could not take (another
    /// sender holds it), and how often to look while the notice listener is down.
    pub poll: Duration,
    /// The longest wait while the listener is up: new messages announce themselves
    /// (`awooop_outbound`, migration 0082) and the next retry, lease expiry or progress update
    /// is waited for exactly, so this only bounds the delay of a notice that was lost.
    pub idle: Duration,
    pub batch: i64,
    pub lease_seconds: f64,
    /// Attempts before a message is `failed`.
    pub max_attempts: i32,
    /// First backoff of a 5xx/network failure; doubled per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest honoured `retry_after` (a provider asking for more fails the attempt bound
    /// sooner rather than parking the message for hours).
    pub max_retry_after: Duration,
    /// Least time between two messages to one chat (Telegram allows about one per second).
    pub chat_min_interval: Duration,
    /// Messages sent at once.
    pub concurrency: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            idle: Duration::from_secs(10),
            batch: 64,
            lease_seconds: 60.0,
            max_attempts: 6,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(3600),
            chat_min_interval: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

type ChatKey = (String, String, String);

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one pass of [`DeliveryWorker::run`] found.
struct Pass {
    claimed: usize,
    /// How long until the next pending message or progress row falls due (zero: one is due
    /// now that this pass could not take); `None`: nothing is pending.
    next_due: Option<Duration>,
}

pub struct DeliveryWorker {
    hub: Hub,
    pool: PgPool,
    cfg: DeliveryConfig,
    /// Every message to a chat (reply parts and status messages alike) takes a token:
    /// one per `chat_min_interval` per (project, channel, conversation). None: unlimited.
    chats: Option<governor::DefaultKeyedRateLimiter<ChatKey>>,
    /// The one project whose messages and progress rows this worker handles (`None`: every
    /// project's).
    project: Option<ProjectId>,
}

/// The text of a run's output: a string, or the `text`/`result` string of an object, else the
/// JSON itself.
pub fn body_text(body: &Value) -> String {
    match body {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("text")
            .or_else(|| o.get("result"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| serde_json::to_string_pretty(body).unwrap_or_default()),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

impl DeliveryWorker {
    /// A worker for every project's messages (`awooop up`, an unbound `awooop worker`).
    pub fn new(hub: Hub, cfg: DeliveryConfig) -> Arc<Self> {
        Self::for_project(hub, cfg, None)
    }

    /// A worker for `project`'s messages only (`None`: every project's, as [`Self::new`]).
    pub fn for_project(hub: Hub, cfg: DeliveryConfig, project: Option<ProjectId>) -> Arc<Self> {
        let pool = hub.control().db().pool_for_health().clone();
        let chats =
            governor::Quota::with_period(cfg.chat_min_interval).map(governor::RateLimiter::keyed);
        Arc::new(Self {
            hub,
            pool,
            cfg,
            chats,
            project,
        })
    }

    /// The transaction due work is found in: across tenants (`delivery` scope), or the bound
    /// project's own tenant transaction, where row-level security shows no other project's rows.
    async fn due_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        match &self.project {
            None => store::delivery_tx(&self.pool).await,
            Some(p) => tenancy::scope(p.clone(), self.hub.control().db().tenant()).await,
        }
    }

    /// Deliver until `shutdown` turns true.
    ///
    /// Each pass is one transaction: claim the due messages, find the due progress rows, count
    /// the queue and read when the next thing falls due; then send. With nothing claimed, the
    /// worker waits for that moment, for a notice of a new message or progress row, or at most
    /// `idle` (`poll` while the listener is down). Before, an idle worker ran three
    /// transactions every 500 ms whatever was queued, and a reply waited for the next of those
    /// polls: 250 ms on average (docs/benchmarks.md, "Session 30").
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listening = Arc::new(AtomicBool::new(false));
        // Aborted when this loop ends or its future is dropped: the task holds a connection.
        let _listener = AbortOnDrop(self.clone().spawn_listener(wake.clone(), listening.clone()));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match self.pass().await {
                Ok(p) if p.claimed > 0 => continue,
                Ok(p) => match p.next_due {
                    // Due now, but held by another sender (a claim or a status being sent).
                    Some(d) if d.is_zero() => self.cfg.poll,
                    Some(d) => d.min(self.cfg.idle),
                    None => self.cfg.idle,
                },
                Err(e) => {
                    tracing::warn!(code = e.code.as_str(), "delivery pass failed");
                    self.cfg.poll
                }
            };
            let wait = if listening.load(Ordering::Acquire) {
                wait
            } else {
                wait.min(self.cfg.poll)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Wake the loop on the `awooop_outbound` notices of its project (every notice if
    /// unbound), and once after each (re)connection and each loss of it (notices sent while
    /// it was down are lost). The process's components share one listening connection
    /// ([`awooop_store::listen`]).
    fn spawn_listener(
        self: Arc<Self>,
        wake: Arc<Notify>,
        listening: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        // A bound worker wakes for its own project's messages only (migration 0084).
        let bound = self.project.clone();
        self.hub
            .control()
            .db()
            .listener()
            .subscribe(OUTBOUND_CHANNEL)
            .wake(wake, listening, move |project| {
                project_notice_wakes(project, bound.as_ref().map(ProjectId::as_str))
            })
    }

    /// One pass (see [`Self::run`]): what it claimed and sent, and when the next thing is due.
    async fn pass(self: &Arc<Self>) -> Result<Pass> {
        let (claimed, progress, depth, next_due) = {
            let mut tx = self.due_tx().await?;
            let claimed = store::claim(&mut tx, self.cfg.batch, self.cfg.lease_seconds).await?;
            let progress = self.due_progress(&mut tx).await?;
            let depth = store::queue_depth(&mut tx).await?;
            let next_due = store::next_due(&mut tx).await?;
            tx.commit().await?;
            (claimed, progress, depth, next_due)
        };
        self.hub.metrics().queue_depth.set(depth);
        let n = self.deliver_all(claimed).await;
        self.progress_all(progress).await;
        Ok(Pass {
            claimed: n,
            // After this pass's own sends nothing it claimed is due again at once (a sent
            // message is done, a failed one backs off), so the reading still stands.
            next_due: next_due.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// One delivery pass on its own: claim due messages and deliver them. Returns how many were
    /// claimed.
    pub async fn tick(self: &Arc<Self>) -> Result<usize> {
        let claimed = {
            let mut tx = self.due_tx().await?;
            let rows = store::claim(&mut tx, self.cfg.batch, self.cfg.lease_seconds).await?;
            tx.commit().await?;
            rows
        };
        Ok(self.deliver_all(claimed).await)
    }

    /// Send claimed messages, `concurrency` at a time; returns how many there were.
    async fn deliver_all(self: &Arc<Self>, claimed: Vec<store::Claimed>) -> usize {
        let n = claimed.len();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.concurrency.max(1)));
        let mut tasks = Vec::with_capacity(n);
        for m in claimed {
            let me = self.clone();
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let Ok(project) = ProjectId::parse(&m.project_id) else {
                    return;
                };
                let id = m.message_id;
                if let Err(e) = tenancy::scope(project, me.deliver(m)).await {
                    tracing::warn!(code = e.code.as_str(), message_id = %id, "delivery failed; the lease returns it");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        n
    }

    fn backoff(&self, attempt: i32) -> Duration {
        awooop_core::backoff::Backoff::new(self.cfg.base_backoff, self.cfg.max_backoff)
            .delay((attempt.clamp(1, 16) - 1) as u32)
    }

    fn chat_key(project: &str, channel: &str, conversation: &str) -> ChatKey {
        (project.into(), channel.into(), conversation.into())
    }

    /// Wait for the chat's next send slot (reply parts).
    async fn chat_wait(&self, project: &str, channel: &str, conversation: &str) {
        if let Some(l) = &self.chats {
            self.evict_quiet_chats();
            l.until_key_ready(&Self::chat_key(project, channel, conversation))
                .await;
        }
    }

    /// Take the chat's send slot if it is free now (status messages: else they wait a turn).
    fn chat_ready(&self, project: &str, channel: &str, conversation: &str) -> bool {
        self.chats.as_ref().is_none_or(|l| {
            self.evict_quiet_chats();
            l.check_key(&Self::chat_key(project, channel, conversation))
                .is_ok()
        })
    }

    /// Chats idle for a full interval are indistinguishable from new ones: drop them so the
    /// limiter's memory follows the active chats.
    fn evict_quiet_chats(&self) {
        if let Some(l) = &self.chats
            && l.len() > 10_000
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    async fn finish(
        &self,
        m: &store::Claimed,
        status: MessageStatus,
        code: Option<ErrorCode>,
        attempt_row: store::Attempt<'_>,
    ) -> Result<()> {
        let mut tx = self.hub.control().db().tenant().await?;
        store::record_attempt(&mut tx, &attempt_row).await?;
        store::finish(&mut tx, m.message_id, status, code.map(ErrorCode::as_str)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliver(self: Arc<Self>, m: store::Claimed) -> Result<()> {
        let project = tenancy::require()?;
        let hub = &self.hub;
        let attempt = |status, code: Option<ErrorCode>, part: i32| store::Attempt {
            project: &m.project_id,
            message_id: m.message_id,
            channel: &m.channel,
            attempt: m.attempts,
            part,
            status,
            http_status: None,
            provider_message_id: None,
            latency_ms: 0,
            code: code.map(ErrorCode::as_str),
        };
        // The reply ends the run's progress messages; this waits for a status message being
        // sent right now (it holds the progress row), so none can follow the reply.
        if m.kind == "reply" {
            let mut tx = hub.control().db().tenant().await?;
            sqlx::query("UPDATE channel_progress SET done = true WHERE run_id = $1 AND NOT done")
                .bind(m.run_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        let ch = match hub.channel(&project, &m.channel).await {
            Ok(c) => c,
            Err(e)
                if e.code == ErrorCode::ChannelNotFound
                    || e.code == ErrorCode::ChannelCredential =>
            {
                let code = e.code;
                return self
                    .finish(
                        &m,
                        MessageStatus::Failed,
                        Some(code),
                        attempt(AttemptStatus::Failed, Some(code), 0),
                    )
                    .await;
            }
            Err(e) => return Err(e),
        };
        let provider = ch.provider();
        let mode = hub.control().mode().await?;
        if !ch.may_send(mode, &m.conversation) {
            let code = ErrorCode::ChannelOutboundDisabled;
            return self
                .finish(
                    &m,
                    MessageStatus::Failed,
                    Some(code),
                    attempt(AttemptStatus::Suppressed, Some(code), 0),
                )
                .await;
        }
        if provider == ChannelProvider::Api {
            // API channel replies are read through the runs API; nothing leaves the platform.
            return self
                .finish(
                    &m,
                    MessageStatus::Sent,
                    None,
                    attempt(AttemptStatus::Sent, None, 0),
                )
                .await;
        }
        let token = match hub.send_credential(&project, &ch).await {
            Ok(t) => t,
            Err(e) => {
                let code = e.code;
                return self
                    .finish(
                        &m,
                        MessageStatus::Failed,
                        Some(code),
                        attempt(AttemptStatus::Failed, Some(code), 0),
                    )
                    .await;
            }
        };
        let text = Redactor::global()
            .redact_str(&body_text(&m.body))
            .into_owned();
        let parts = format::parts(provider, &text);
        let buttons = providers::buttons_of(&m.body);
        let last = parts.len().saturating_sub(1);
        let label = provider.as_str();
        let mut reply_token = if provider == ChannelProvider::Line && m.parts_sent == 0 {
            let mut tx = hub.control().db().tenant().await?;
            let t = store::reply_token(&mut tx, m.run_id).await?;
            tx.commit().await?;
            t
        } else {
            None
        };
        for (i, texts) in parts.iter().enumerate().skip(m.parts_sent.max(0) as usize) {
            self.chat_wait(&m.project_id, &m.channel, &m.conversation)
                .await;
            let used_reply_token = reply_token.take();
            let mut timed = providers::send(
                hub.http(),
                &hub.config().urls,
                provider,
                &token,
                &m.conversation,
                texts,
                providers::line_retry_key(m.message_id, i),
                used_reply_token.as_deref(),
                if i == last { buttons.as_slice() } else { &[] },
            )
            .await;
            if used_reply_token.is_some()
                && let SendOutcome::Rejected { status, .. } = &timed.outcome
            {
                // A reply token LINE no longer takes (expired, used): the same part as a push,
                // whose retry key keeps it to one message.
                let mut tx = hub.control().db().tenant().await?;
                store::record_attempt(
                    &mut tx,
                    &store::Attempt {
                        http_status: *status,
                        latency_ms: timed.latency.as_millis() as u64,
                        ..attempt(
                            AttemptStatus::Retry,
                            Some(ErrorCode::ChannelDeliveryFailed),
                            i as i32,
                        )
                    },
                )
                .await?;
                tx.commit().await?;
                timed = providers::send(
                    hub.http(),
                    &hub.config().urls,
                    provider,
                    &token,
                    &m.conversation,
                    texts,
                    providers::line_retry_key(m.message_id, i),
                    None,
                    if i == last { buttons.as_slice() } else { &[] },
                )
                .await;
            }
            hub.metrics()
                .delivery_seconds
                .get_or_create(&super::metrics::ProviderLabel {
                    provider: label.into(),
                })
                .observe(timed.latency.as_secs_f64());
            let latency_ms = timed.latency.as_millis() as u64;
            let part = i as i32;
            match timed.outcome {
                SendOutcome::Sent {
                    provider_id,
                    status,
                } => {
                    let mut tx = hub.control().db().tenant().await?;
                    store::record_attempt(
                        &mut tx,
                        &store::Attempt {
                            status: AttemptStatus::Sent,
                            http_status: Some(status),
                            provider_message_id: provider_id.as_deref(),
                            latency_ms,
                            ..attempt(AttemptStatus::Sent, None, part)
                        },
                    )
                    .await?;
                    store::part_sent(&mut tx, m.message_id, part + 1, provider_id.as_deref())
                        .await?;
                    tx.commit().await?;
                }
                SendOutcome::Retry {
                    after_ms,
                    status,
                    reason,
                } => {
                    hub.metrics()
                        .delivery_retries
                        .get_or_create(&super::metrics::ProviderLabel {
                            provider: label.into(),
                        })
                        .inc();
                    let code = ErrorCode::ChannelDeliveryFailed;
                    let give_up = m.attempts >= self.cfg.max_attempts;
                    let row = store::Attempt {
                        http_status: status,
                        latency_ms,
                        ..attempt(
                            if give_up {
                                AttemptStatus::Failed
                            } else {
                                AttemptStatus::Retry
                            },
                            Some(code),
                            part,
                        )
                    };
                    if give_up {
                        tracing::warn!(message_id = %m.message_id, reason, "delivery gave up");
                        hub.metrics()
                            .delivery_failures
                            .get_or_create(&super::metrics::CodeLabel {
                                provider: label.into(),
                                code: code.as_str().into(),
                            })
                            .inc();
                        return self
                            .finish(&m, MessageStatus::Failed, Some(code), row)
                            .await;
                    }
                    let wait = match after_ms {
                        Some(ms) => Duration::from_millis(ms).min(self.cfg.max_retry_after),
                        None if reason == "rate_limited" => {
                            Duration::from_millis(providers::DEFAULT_RETRY_MS)
                        }
                        None => self.backoff(m.attempts),
                    };
                    let mut tx = hub.control().db().tenant().await?;
                    store::record_attempt(&mut tx, &row).await?;
                    store::retry_later(
                        &mut tx,
                        m.message_id,
                        wait.as_millis() as u64,
                        code.as_str(),
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(());
                }
                SendOutcome::Rejected { status, reason } => {
                    tracing::warn!(message_id = %m.message_id, reason = reason.as_str(), "provider rejected the message");
                    let code = ErrorCode::ChannelDeliveryFailed;
                    hub.metrics()
                        .delivery_failures
                        .get_or_create(&super::metrics::CodeLabel {
                            provider: label.into(),
                            code: code.as_str().into(),
                        })
                        .inc();
                    let row = store::Attempt {
                        http_status: status,
                        latency_ms,
                        ..attempt(AttemptStatus::Failed, Some(code), part)
                    };
                    return self
                        .finish(&m, MessageStatus::Failed, Some(code), row)
                        .await;
                }
            }
        }
        let mut tx = hub.control().db().tenant().await?;
        store::finish(&mut tx, m.message_id, MessageStatus::Sent, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One progress pass on its own: status messages of long runs. Returns how many were sent
    /// or edited.
    pub async fn progress_tick(self: &Arc<Self>) -> Result<usize> {
        let due = {
            let mut tx = self.due_tx().await?;
            let rows = self.due_progress(&mut tx).await?;
            tx.commit().await?;
            rows
        };
        Ok(self.progress_all(due).await)
    }

    /// Progress rows due now (at most a batch), in the order they fell due.
    async fn due_progress(&self, conn: &mut sqlx::PgConnection) -> Result<Vec<(String, Uuid)>> {
        Ok(sqlx::query_as(
            "SELECT project_id, run_id FROM channel_progress WHERE NOT done AND next_at <= now() \
             ORDER BY next_at LIMIT $1",
        )
        .bind(self.cfg.batch)
        .fetch_all(conn)
        .await?)
    }

    /// Send or edit the status messages of `due`; returns how many were sent or edited.
    async fn progress_all(&self, due: Vec<(String, Uuid)>) -> usize {
        let mut n = 0;
        for (project, run_id) in due {
            let Ok(p) = ProjectId::parse(&project) else {
                continue;
            };
            match tenancy::scope(p, self.progress_one(run_id)).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(code = e.code.as_str(), %run_id, "progress update failed"),
            }
        }
        n
    }

    async fn progress_one(&self, run_id: Uuid) -> Result<bool> {
        let project = tenancy::require()?;
        let hub = &self.hub;
        let mut tx = hub.control().db().tenant().await?;
        // Held until the status is sent: the reply path waits for it (see module docs).
        let row: Option<(String, String, i32, Option<String>, i32)> = sqlx::query_as(
            "SELECT channel, conversation, interval_seconds, provider_message_id, updates FROM channel_progress \
             WHERE run_id = $1 AND NOT done AND next_at <= now() FOR UPDATE SKIP LOCKED",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((channel, conversation, interval, message_id, updates)) = row else {
            return Ok(false);
        };
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        let live = matches!(
            state.as_deref(),
            Some("queued" | "running" | "retrying" | "waiting_approval")
        );
        let reschedule = |secs: f64| {
            sqlx::query("UPDATE channel_progress SET next_at = now() + make_interval(secs => $2) WHERE run_id = $1")
                .bind(run_id)
                .bind(secs)
        };
        if !live {
            sqlx::query("UPDATE channel_progress SET done = true WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(false);
        }
        if !self.chat_ready(project.as_str(), &channel, &conversation) {
            reschedule(self.cfg.chat_min_interval.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(false);
        }
        let step: Option<(String, String)> = sqlx::query_as(
            "SELECT step_key, step_type FROM run_steps WHERE run_id = $1 ORDER BY step_index DESC, finished_at DESC LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let elapsed = (updates + 1) * interval;
        let text = status_text(
            state.as_deref().unwrap_or("running"),
            step.as_ref(),
            elapsed,
        );
        let ch = hub.channel(&project, &channel).await?;
        let mode = hub.control().mode().await?;
        if !ch.may_send(mode, &conversation) {
            sqlx::query("UPDATE channel_progress SET done = true WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(false);
        }
        let token = hub.send_credential(&project, &ch).await?;
        let urls = &hub.config().urls;
        let provider = ch.provider();
        let timed = match (provider, &message_id) {
            (ChannelProvider::Line, _) => {
                // LINE has no edit: the loading animation covers up to 60 s, then one push.
                if elapsed <= 60 {
                    providers::line_loading(
                        hub.http(),
                        urls,
                        &token,
                        &conversation,
                        interval as u32 * 2,
                    )
                    .await
                } else if message_id.is_none() {
                    providers::send(
                        hub.http(),
                        urls,
                        provider,
                        &token,
                        &conversation,
                        std::slice::from_ref(&text),
                        providers::line_retry_key(run_id, 10_000),
                        None,
                        &[],
                    )
                    .await
                } else {
                    // One push only: further updates would be new messages.
                    reschedule(f64::from(interval)).execute(&mut *tx).await?;
                    tx.commit().await?;
                    return Ok(false);
                }
            }
            (_, None) => {
                let texts = format::parts(provider, &text)
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                providers::send(
                    hub.http(),
                    urls,
                    provider,
                    &token,
                    &conversation,
                    &texts,
                    providers::line_retry_key(run_id, 10_000),
                    None,
                    &[],
                )
                .await
            }
            (_, Some(id)) => {
                let t = format::parts(provider, &text)
                    .into_iter()
                    .next()
                    .unwrap_or_default()
                    .concat();
                providers::edit(hub.http(), urls, provider, &token, &conversation, id, &t).await
            }
        };
        match timed.outcome {
            SendOutcome::Sent { provider_id, .. } => {
                sqlx::query(
                    "UPDATE channel_progress SET provider_message_id = coalesce($2, provider_message_id), \
                       updates = updates + 1, last_text = $3, next_at = now() + make_interval(secs => $4) \
                     WHERE run_id = $1",
                )
                .bind(run_id)
                .bind(provider_id.filter(|_| provider != ChannelProvider::Line || elapsed > 60))
                .bind(&text)
                .bind(f64::from(interval))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }
            SendOutcome::Retry { after_ms, .. } => {
                let wait = after_ms
                    .map(|ms| ms as f64 / 1000.0)
                    .unwrap_or(f64::from(interval));
                reschedule(wait).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(false)
            }
            SendOutcome::Rejected { .. } => {
                // A status message is best effort: stop updating, the reply still goes out.
                sqlx::query("UPDATE channel_progress SET done = true WHERE run_id = $1")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Err(Error::new(
                    ErrorCode::ChannelDeliveryFailed,
                    "status message rejected by the provider",
                ))
            }
        }
    }
}

/// The status line of a running run.
pub fn status_text(state: &str, step: Option<&(String, String)>, elapsed_seconds: i32) -> String {
    let doing = match (state, step) {
        ("waiting_approval", _) => "waiting for approval".to_string(),
        ("queued" | "retrying", _) => "waiting for a worker".to_string(),
        (_, Some((key, kind))) if kind == "tool_call" => format!("calling a tool (step {key})"),
        (_, Some((key, _))) => format!("working (step {key})"),
        (_, None) => "working".to_string(),
    };
    format!("⏳ Still on it: {doing} ({elapsed_seconds} s)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_text_picks_the_readable_part() {
        assert_eq!(body_text(&json!("hi")), "hi");
        assert_eq!(body_text(&json!({"text": "t", "x": 1})), "t");
        assert_eq!(body_text(&json!({"result": "r", "steps": {}})), "r");
        assert!(body_text(&json!({"a": 1})).contains("\"a\": 1"));
    }

    #[test]
    fn status_texts() {
        assert!(status_text("waiting_approval", None, 30).contains("approval"));
        let s = ("pods".to_string(), "tool_call".to_string());
        assert!(status_text("running", Some(&s), 60).contains("calling a tool (step pods)"));
        assert!(status_text("running", None, 90).contains("90 s"));
    }
}
