//! ProviderProxy: every model call leaves the platform here.
//!
//! For each target of the resolved route, in order (primary, then fallbacks), up to
//! `retries + 1` attempts: skip the provider while its circuit breaker is open; reserve the
//! call's worst case in the budget ledger (`E-BUDGET-001/003` stop the call: a budget refusal
//! is never "fallen back" around); send the streaming request with the target's timeout;
//! count streamed output against the reservation and abort with `E-BUDGET-002` when it is
//! exhausted; settle the actual usage. Timeouts, connection errors, 408, 429 and 5xx count
//! against the provider's breaker and fall back; other 4xx (`E-MODEL-008`) and malformed
//! streams (`E-MODEL-004/005`) end the call.
//!
//! Every attempt produces a [`PlatformEnvelope`] (run, trace, project, agent, policy decision,
//! provider, model, usage, cost, outcome) that is audited as `model.call`; the executor
//! journals the final one with the step. API keys come from a [`CredentialResolver`] and go
//! only into the request header: never into envelopes, errors or logs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::breaker::{Anomaly, AnomalyCounter, Breakers};
use super::budget::{Budget, ReservationGuard, ReserveRequest, cost_micros};
use super::policy::{EffectivePolicy, Target};
use super::wire::{self, ChatRequest, ChatResponse, Decoder, Usage};
use awooop_contracts::{CredentialSource, DataClass, ProviderApi};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::trace::TraceContext;
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{self, Db, ProjectId};

/// A secret value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resolves provider API key references to values, for the calling project only. The one
/// implementation is the gateway's [`awooop_gateway::credentials::CredentialResolver`], so a
/// Policy/Routing contract can name only what its project may read (allow-listed environment
/// variables, files under the project's credential folder, Secrets labelled for the project):
/// a project can never point a provider's `api_key` at the platform's own secrets
/// (`DATABASE_URL`, the gateway key) or another tenant's and send them to a `base_url` it chose.
#[async_trait]
pub trait CredentialResolver: Send + Sync {
    async fn resolve(&self, project: &ProjectId, source: &CredentialSource) -> Result<Secret>;
}

#[async_trait]
impl CredentialResolver for awooop_gateway::credentials::CredentialResolver {
    async fn resolve(&self, project: &ProjectId, source: &CredentialSource) -> Result<Secret> {
        // The gateway's denial is deliberately generic; give it the model path's code.
        awooop_gateway::credentials::CredentialResolver::resolve(self, project, source)
            .await
            .map(|v| Secret(v.expose().to_string()))
            .map_err(|_| {
                Error::new(
                    ErrorCode::ModelCredential,
                    "provider API key reference cannot be resolved for this project",
                )
            })
    }
}

/// Why the proxy chose a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub route: String,
    pub data_class: DataClass,
    pub target_index: usize,
    /// Earlier targets/attempts and why they were left (e.g. `cloud: 429`).
    pub fallbacks: Vec<String>,
}

/// The record of one model call attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformEnvelope {
    pub call_id: Uuid,
    pub run_id: Option<Uuid>,
    pub trace_id: String,
    pub span_id: String,
    pub project: String,
    pub agent: String,
    pub decision: PolicyDecision,
    pub provider: String,
    pub model: String,
    pub reservation_id: Option<Uuid>,
    pub reserved_tokens: u64,
    pub usage: Usage,
    pub cost_micros: u64,
    pub outcome: String,
    pub error_code: Option<String>,
    pub duration_ms: u64,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct CallMeta {
    pub run_id: Option<Uuid>,
    pub agent: String,
    pub trace: TraceContext,
}

/// A finished call: the response and the envelope of the attempt that produced it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCall {
    pub response: ChatResponse,
    pub envelope: PlatformEnvelope,
}

/// How one attempt ended, for the fallback decision.
enum AttemptError {
    /// Try the next attempt/target (timeout, connection, 408/429/5xx).
    Retryable(String),
    /// Stop the call.
    Fatal(Error),
}

pub struct ProviderProxy {
    /// One HTTP client per project, built under the egress policy snapshot in force (the
    /// digest): its resolver refuses addresses the policy does not allow on every connection,
    /// and it follows no redirects and uses no proxy.
    clients: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], reqwest::Client)>>,
    egress: awooop_policy::PolicySource,
    db: Db,
    budget: Budget,
    breakers: Breakers,
    anomalies: AnomalyCounter,
    creds: Arc<dyn CredentialResolver>,
    /// Extra life of a reservation past the call's timeout before the sweep may charge it.
    pub reservation_grace: Duration,
}

impl ProviderProxy {
    pub fn new(
        db: Db,
        anomalies: AnomalyCounter,
        creds: Arc<dyn CredentialResolver>,
    ) -> Result<Self> {
        awooop_core::tls::install_crypto_provider();
        Ok(Self {
            clients: Default::default(),
            egress: awooop_policy::PolicySource::from_db(db.clone()),
            budget: Budget::new(db.clone()),
            breakers: Breakers::new(db.clone()),
            db,
            anomalies,
            creds,
            reservation_grace: Duration::from_secs(60),
        })
    }

    /// Reserve through budget leases of this process instead of a ledger transaction per
    /// call (docs/model.md, "Budget leases"). Call [`Budget::shutdown`] on
    /// [`ProviderProxy::budget`] at graceful shutdown to give unused slices back.
    pub fn with_budget_leases(mut self, config: super::budget::lease::LeaseConfig) -> Self {
        self.budget = Budget::with_leases(self.db.clone(), config);
        self
    }

    /// Use another platform policy source (`awooop up` adds its local loopback allowance).
    pub fn with_egress(mut self, egress: awooop_policy::PolicySource) -> Self {
        self.egress = egress;
        self
    }

    /// The project's client, after checking `base_url` (a tenant's) against the egress policy.
    async fn client_for(
        &self,
        project: &ProjectId,
        base_url: &str,
    ) -> std::result::Result<reqwest::Client, AttemptError> {
        let snap = self.egress.snapshot().await.map_err(AttemptError::Fatal)?;
        snap.egress
            .check(project.as_str(), base_url)
            .map_err(|e| AttemptError::Fatal(Error::new(ErrorCode::EgressDenied, e.to_string())))?;
        let mut clients = self.clients.lock().expect("clients");
        if let Some((digest, c)) = clients.get(project.as_str())
            && *digest == snap.digest
        {
            return Ok(c.clone());
        }
        let c = awooop_policy::egress::client_builder(project.as_str(), snap.egress.clone())
            .connect_timeout(Duration::from_secs(10))
            // Requests are small writes on a kept-alive connection: do not wait for ACKs.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| AttemptError::Fatal(Error::internal(e)))?;
        clients.insert(project.as_str().to_string(), (snap.digest, c.clone()));
        Ok(c)
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Call the route with fallback. `max_output` caps every target's `max_output_tokens`
    /// (the run's remaining token allowance).
    pub async fn chat(
        &self,
        policy: &EffectivePolicy,
        meta: &CallMeta,
        req: &ChatRequest,
        max_output: Option<u64>,
    ) -> Result<ModelCall> {
        let mut fallbacks = Vec::new();
        for (index, target) in policy.targets.iter().enumerate() {
            if policy.breaker.is_some() && self.breakers.provider_open(&target.base_url).await? {
                fallbacks.push(format!("{}: circuit open", target.provider));
                continue;
            }
            for _ in 0..=policy.retries {
                let decision = PolicyDecision {
                    route: policy.route.clone(),
                    data_class: policy.data_class,
                    target_index: index,
                    fallbacks: fallbacks.clone(),
                };
                match self
                    .attempt(policy, target, decision, meta, req, max_output)
                    .await
                {
                    Ok(call) => {
                        if policy.breaker.is_some() {
                            self.breakers.provider_success(&target.base_url).await?;
                        }
                        return Ok(call);
                    }
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::Retryable(why)) => {
                        let _ = self.anomalies.record(Anomaly::ProviderError).await;
                        fallbacks.push(format!("{}: {why}", target.provider));
                        if let Some(b) = &policy.breaker
                            && self
                                .breakers
                                .provider_failure(&target.provider, &target.base_url, b)
                                .await?
                        {
                            break; // circuit just opened: next target
                        }
                    }
                }
            }
        }
        Err(Error::new(
            ErrorCode::ModelProviderUnavailable,
            "every target of the route failed",
        )
        .with_details(json!({"route": policy.route, "attempts": fallbacks})))
    }

    async fn attempt(
        &self,
        policy: &EffectivePolicy,
        target: &Target,
        decision: PolicyDecision,
        meta: &CallMeta,
        req: &ChatRequest,
        max_output: Option<u64>,
    ) -> std::result::Result<ModelCall, AttemptError> {
        let started = Instant::now();
        let project = tenancy::require().map_err(AttemptError::Fatal)?;
        let max_tokens = match max_output {
            Some(m) => (m.min(u64::from(target.max_output_tokens)).max(1)) as u32,
            None => target.max_output_tokens,
        };
        let prompt_bound = wire::prompt_token_bound(req);
        let worst = prompt_bound + u64::from(max_tokens);
        let worst_micros = cost_micros(prompt_bound, target.input_micros_per_mtok)
            + cost_micros(u64::from(max_tokens), target.output_micros_per_mtok);
        let timeout = Duration::from_millis(u64::from(target.timeout_ms));
        let mut env = PlatformEnvelope {
            call_id: Uuid::now_v7(),
            run_id: meta.run_id,
            trace_id: meta.trace.trace_id.clone(),
            span_id: meta.trace.span_id.clone(),
            project: project.as_str().to_string(),
            agent: meta.agent.clone(),
            decision,
            provider: target.provider.clone(),
            model: target.model.clone(),
            reservation_id: None,
            reserved_tokens: worst,
            usage: Usage::default(),
            cost_micros: 0,
            outcome: "refused".into(),
            error_code: None,
            duration_ms: 0,
        };
        let reservation = match self
            .budget
            .reserve(
                &policy.budget,
                &ReserveRequest {
                    run_id: meta.run_id,
                    agent: meta.agent.clone(),
                    provider: target.provider.clone(),
                    model: target.model.clone(),
                    tokens: worst,
                    micros: worst_micros,
                    ttl: timeout + self.reservation_grace,
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e.code,
                    ErrorCode::BudgetExceeded | ErrorCode::BudgetBreakerOpen
                ) {
                    let _ = self.anomalies.record(Anomaly::Denial).await;
                }
                env.error_code = Some(e.code.as_str().into());
                self.audit(&env).await;
                return Err(AttemptError::Fatal(e));
            }
        };
        env.reservation_id = Some(reservation.id);
        let guard = ReservationGuard::new(self.budget.clone(), project.clone(), reservation);
        // From here the request may reach the provider, which may bill it: a call dropped
        // before its envelope is audited (a run's timeout_seconds, an aborted run) is audited
        // as `dropped`, at what was counted (the guard settles it at the same usage).
        let unaudited = DroppedCall {
            db: self.db.clone(),
            project: project.clone(),
            env: Some(env.clone()),
            started,
            counted: guard.consumed_tokens.clone(),
            prompt_bound,
            prices: (target.input_micros_per_mtok, target.output_micros_per_mtok),
        };
        let res = tokio::time::timeout(
            timeout,
            self.stream(target, max_tokens, req, &guard, prompt_bound, worst),
        )
        .await
        .unwrap_or_else(|_| Err(AttemptError::Retryable("timeout".into())));
        env.duration_ms = started.elapsed().as_millis() as u64;
        match res {
            Ok(response) => {
                // Settle at the reported usage; fields the provider did not report fall back
                // to the platform's bound (never less than what was counted).
                let input = if response.usage.reported && response.usage.input_tokens > 0 {
                    response.usage.input_tokens
                } else {
                    prompt_bound
                };
                let output = response.usage.output_tokens;
                let micros = cost_micros(input, target.input_micros_per_mtok)
                    + cost_micros(output, target.output_micros_per_mtok);
                if let Err(e) = guard.settle(input + output, micros).await {
                    unaudited.disarm();
                    return Err(AttemptError::Fatal(e));
                }
                env.usage = Usage {
                    input_tokens: input,
                    output_tokens: output,
                    reported: response.usage.reported,
                };
                env.cost_micros = micros;
                env.outcome = "ok".into();
                // Disarmed in the same poll that starts the audit (which writes from a task of
                // its own): never both rows, never neither.
                unaudited.disarm();
                self.audit(&env).await;
                Ok(ModelCall {
                    response,
                    envelope: env,
                })
            }
            Err(e) => {
                // What was sent and streamed is charged (the provider may bill it).
                let counted = guard.consumed_tokens.load(Ordering::SeqCst);
                let micros = if counted == 0 {
                    0
                } else {
                    cost_micros(prompt_bound, target.input_micros_per_mtok)
                        + cost_micros(
                            counted.saturating_sub(prompt_bound),
                            target.output_micros_per_mtok,
                        )
                };
                if let Err(e) = guard.settle(counted, micros).await {
                    unaudited.disarm();
                    return Err(AttemptError::Fatal(e));
                }
                env.usage = Usage {
                    input_tokens: counted.min(prompt_bound),
                    output_tokens: counted.saturating_sub(prompt_bound),
                    reported: false,
                };
                env.cost_micros = micros;
                match &e {
                    AttemptError::Retryable(why) => {
                        env.outcome = format!("retryable: {why}");
                        env.error_code = Some(ErrorCode::ModelProviderUnavailable.as_str().into());
                    }
                    AttemptError::Fatal(err) => {
                        env.outcome = "failed".into();
                        env.error_code = Some(err.code.as_str().into());
                    }
                }
                unaudited.disarm();
                self.audit(&env).await;
                Err(e)
            }
        }
    }

    /// Send the request and decode the stream, counting into `guard`.
    async fn stream(
        &self,
        target: &Target,
        max_tokens: u32,
        req: &ChatRequest,
        guard: &ReservationGuard,
        prompt_bound: u64,
        worst: u64,
    ) -> std::result::Result<ChatResponse, AttemptError> {
        let body = wire::request_body(target.api, &target.model, max_tokens, req);
        let project = tenancy::require().map_err(AttemptError::Fatal)?;
        let http = self.client_for(&project, &target.base_url).await?;
        let mut rb = http
            .post(wire::endpoint(target.api, &target.base_url))
            .json(&body);
        if target.api == ProviderApi::AnthropicMessages {
            rb = rb.header("anthropic-version", "2023-06-01");
        }
        if let Some(src) = &target.api_key {
            let project = tenancy::require().map_err(AttemptError::Fatal)?;
            let key = self
                .creds
                .resolve(&project, src)
                .await
                .map_err(AttemptError::Fatal)?;
            rb = match target.api {
                ProviderApi::AnthropicMessages => rb.header("x-api-key", key.expose()),
                _ => rb.bearer_auth(key.expose()),
            };
        }
        let mut resp = rb.send().await.map_err(|e| {
            if let Some(why) = awooop_policy::egress::refused_by_policy(&e) {
                return AttemptError::Fatal(Error::new(ErrorCode::EgressDenied, why.to_string()));
            }
            // reqwest's Display may include the URL but never headers.
            AttemptError::Retryable(if e.is_timeout() {
                "timeout".into()
            } else {
                "connection failed".into()
            })
        })?;
        // From here on the prompt was sent: it is charged even if the call fails.
        guard.consumed_tokens.store(prompt_bound, Ordering::SeqCst);
        let status = resp.status();
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            guard.consumed_tokens.store(0, Ordering::SeqCst);
            return Err(AttemptError::Retryable(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            guard.consumed_tokens.store(0, Ordering::SeqCst);
            return Err(AttemptError::Fatal(
                Error::new(
                    ErrorCode::ModelProviderRejected,
                    format!(
                        "provider rejected the request with HTTP {}",
                        status.as_u16()
                    ),
                )
                .with_details(json!({"status": status.as_u16()})),
            ));
        }
        let mut dec = Decoder::new(target.api);
        let output_allowance = worst - prompt_bound;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => {
                    return Err(AttemptError::Fatal(Error::new(
                        ErrorCode::ModelBadResponse,
                        "stream broke off (truncated)",
                    )));
                }
            };
            dec.feed(&chunk).map_err(AttemptError::Fatal)?;
            let out = dec.output_tokens_so_far();
            guard
                .consumed_tokens
                .store(prompt_bound + out.min(output_allowance), Ordering::SeqCst);
            if out > output_allowance {
                return Err(AttemptError::Fatal(Error::new(
                    ErrorCode::BudgetStreamAborted,
                    "the streamed output exhausted the call's reservation; stream aborted",
                )));
            }
            if dec.is_done() {
                break;
            }
        }
        dec.finish().map_err(AttemptError::Fatal)
    }

    async fn audit(&self, env: &PlatformEnvelope) {
        audit_envelope(&self.db, env).await;
    }
}

/// The audit row of a model call's envelope (`model.call`).
async fn audit_envelope(db: &Db, env: &PlatformEnvelope) {
    let details = serde_json::to_value(env).unwrap_or_default();
    let entry = Entry {
        trace_id: Some(env.trace_id.clone()),
        ..if env.outcome == "ok" {
            Entry::ok("model", "model.call", env.provider.clone(), details)
        } else {
            Entry {
                outcome: audit::Outcome::Error,
                // The stable code, as the audit log's indexed column.
                code: env.error_code.as_deref().and_then(|c| {
                    ErrorCode::ALL
                        .iter()
                        .find(|x| x.as_str() == c)
                        .map(|x| x.as_str())
                }),
                ..Entry::ok("model", "model.call", env.provider.clone(), details)
            }
        }
    };
    audit::record_detached(db, entry).await;
}

/// Audits a model call dropped after its reservation (see `attempt`): outcome `dropped`,
/// usage and cost as counted so far (the prompt bound once the request was sent, plus the
/// streamed output), as `ReservationGuard`'s `Drop` settles it.
struct DroppedCall {
    db: Db,
    project: ProjectId,
    /// `None` once the call's own envelope is being audited.
    env: Option<PlatformEnvelope>,
    started: Instant,
    counted: Arc<std::sync::atomic::AtomicU64>,
    prompt_bound: u64,
    /// Input and output micro-units per million tokens.
    prices: (u64, u64),
}

impl DroppedCall {
    fn disarm(mut self) {
        self.env = None;
    }
}

impl Drop for DroppedCall {
    fn drop(&mut self) {
        let Some(mut env) = self.env.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let counted = self.counted.load(Ordering::SeqCst);
        env.usage = Usage {
            input_tokens: counted.min(self.prompt_bound),
            output_tokens: counted.saturating_sub(self.prompt_bound),
            reported: false,
        };
        env.cost_micros = if counted == 0 {
            0
        } else {
            cost_micros(self.prompt_bound, self.prices.0)
                + cost_micros(counted.saturating_sub(self.prompt_bound), self.prices.1)
        };
        env.outcome = "dropped".into();
        env.duration_ms = self.started.elapsed().as_millis() as u64;
        let db = self.db.clone();
        handle.spawn(tenancy::scope(self.project.clone(), async move {
            audit_envelope(&db, &env).await;
        }));
    }
}
