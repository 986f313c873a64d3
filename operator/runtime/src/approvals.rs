//! Approval requests: a tool call that needs people waits in `waiting_approval` with an
//! `approval_requests` row; approvers decide over HTTP, the CLI or chat buttons; M-of-N decides,
//! one reject rejects; at quorum the approval token is minted and the run re-queued, and the
//! worker resumes it from the journal (docs/approvals.md).
//!
//! Pure parts: [`ApprovalPolicy::from_project`], [`eligible`], [`tally`], [`chat_data`] /
//! [`parse_chat_data`]. I/O: [`insert_request`] (inside the worker's completion transaction,
//! so the waiting run and its request land together), [`ApprovalService`] (decisions, in one
//! tenant transaction each) and [`expire_due`] (the reaper's part).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Acquire, PgConnection, PgPool};
use uuid::Uuid;

use awooop_contracts::{Contract, ContractKind, ProjectContract};
use awooop_control::ControlPlane;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::redact::Redactor;
use awooop_store::audit::{self, Entry};
use awooop_store::tenancy::{self, ProjectId};

use crate::outbound::ReplyTo;

/// Approval request kinds: a gate asked for approval (`approval`), or suggest mode turned a
/// write into a proposal (`proposal`). Both are decided the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Approval,
    Proposal,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approval => "approval",
            Self::Proposal => "proposal",
        }
    }
}

/// A tool call that waits for approval, as the executor journaled it.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedsApproval {
    pub kind: RequestKind,
    pub step_index: i32,
    pub tool: String,
    /// The exact arguments the approved call will carry.
    pub arguments: Value,
    /// SHA-256 of their RFC 8785 canonical form (what the token binds).
    pub args_sha256: String,
    pub reason: String,
    /// Dry-run result, rollback tool, rationale (from the gateway's refusal and the model).
    pub evidence: Option<Value>,
}

/// Quorum, eligible approvers and lifetime of approval requests, from the active Project
/// contract (`approval.required_approvals`, `acl.approvers`, `approval.ttl_seconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    pub required: i32,
    /// Empty: any key with the approver role.
    pub approvers: Vec<String>,
    pub ttl_seconds: i64,
}

impl ApprovalPolicy {
    /// Without a Project contract: one approver with the approver role, within an hour.
    pub fn from_project(p: Option<&ProjectContract>) -> Self {
        match p {
            Some(p) => Self {
                required: i32::from(p.approval.required_approvals.max(1)),
                approvers: p.acl.approvers.iter().map(|a| a.0.clone()).collect(),
                ttl_seconds: i64::from(p.approval.ttl_seconds),
            },
            None => Self {
                required: 1,
                approvers: vec![],
                ttl_seconds: 3600,
            },
        }
    }
}

/// May `principal` decide a request whose eligible approvers are `approvers`?
pub fn eligible(approvers: &[String], principal: &str) -> bool {
    approvers.is_empty() || approvers.iter().any(|a| a == principal)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

/// Where the decisions of a request stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pending { approvals: usize },
    Approved { approvers: Vec<String> },
    Rejected { by: String },
}

/// M-of-N: distinct approvers count once each (the first decision of an approver is the one
/// that counts); one reject rejects.
pub fn tally(required: i32, decisions: &[(String, Decision)]) -> Verdict {
    let mut seen = std::collections::HashSet::new();
    let mut approvers = Vec::new();
    for (who, d) in decisions {
        if !seen.insert(who.as_str()) {
            continue;
        }
        match d {
            Decision::Reject => return Verdict::Rejected { by: who.clone() },
            Decision::Approve => approvers.push(who.clone()),
        }
    }
    if approvers.len() >= required.max(1) as usize {
        Verdict::Approved { approvers }
    } else {
        Verdict::Pending {
            approvals: approvers.len(),
        }
    }
}

/// What an approval token binds (the gateway mints it with its approval key).
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    pub project: &'a str,
    pub agent: &'a str,
    pub run_id: Uuid,
    pub tool: &'a str,
    pub args_sha256: &'a str,
    pub approvers: &'a [String],
    pub ttl_seconds: i64,
}

/// Mints approval tokens at quorum: implemented by the gateway (`awooop-gateway`), which
/// holds the approval key and the environment runs execute in.
pub trait TokenMinter: Send + Sync {
    fn mint(&self, req: &MintRequest<'_>) -> Result<String>;
}

/// The callback data of a chat button: `apr:{request_id}:{a|r}` (fits Telegram's 64 bytes).
pub fn chat_data(request_id: Uuid, d: Decision) -> String {
    let c = match d {
        Decision::Approve => 'a',
        Decision::Reject => 'r',
    };
    format!("apr:{}:{c}", request_id.simple())
}

pub fn parse_chat_data(s: &str) -> Option<(Uuid, Decision)> {
    let rest = s.strip_prefix("apr:")?;
    let (id, d) = rest.split_once(':')?;
    let d = match d {
        "a" => Decision::Approve,
        "r" => Decision::Reject,
        _ => return None,
    };
    Some((Uuid::parse_str(id).ok()?, d))
}

/// One request as the API shows it (never the token).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ApprovalView {
    pub request_id: Uuid,
    pub run_id: Uuid,
    pub step_index: i32,
    /// `approval` or `proposal` (suggest mode).
    pub kind: String,
    pub agent: String,
    /// Exposed tool name `{provider}__{tool}`.
    pub tool: String,
    /// SHA-256 of the canonical arguments the approved call will carry.
    pub args_sha256: String,
    /// The arguments, redacted.
    pub preview: Value,
    pub reason: String,
    /// Dry-run result and rollback plan, when the tool declares them.
    pub evidence: Option<Value>,
    pub required_approvals: i32,
    /// Eligible approvers (empty: any key with the approver role).
    pub approvers: Vec<String>,
    /// pending, approved, rejected or expired.
    pub state: String,
    /// Who decided it (the approvers at quorum, or the one who rejected).
    pub decided_by: Vec<String>,
    pub decision_comment: Option<String>,
    pub trace_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Decisions so far: `[{approver, decision, comment, via, decided_at}]`.
    pub decisions: Value,
}

const VIEW: &str = "SELECT r.request_id, r.run_id, r.step_index, r.kind, r.agent, r.tool, r.args_sha256, \
    r.preview, r.reason, r.evidence, r.required_approvals, r.approvers, r.state, r.decided_by, \
    r.decision_comment, r.trace_id, r.created_at, r.expires_at, r.decided_at, \
    coalesce((SELECT jsonb_agg(jsonb_build_object('approver', d.approver, 'decision', d.decision, \
        'comment', d.comment, 'via', d.via, 'decided_at', d.decided_at) ORDER BY d.decided_at) \
        FROM approval_decisions d WHERE d.project_id = r.project_id AND d.request_id = r.request_id), '[]'::jsonb) AS decisions \
    FROM approval_requests r";

/// Insert the request of a run that just moved to `waiting_approval` (in the completion's
/// transaction), audit it, and post it with Approve/Reject buttons to the chat that started
/// the run. Idempotent per (run, step).
#[allow(clippy::too_many_arguments)]
pub async fn insert_request(
    conn: &mut PgConnection,
    project: &str,
    run_id: Uuid,
    agent: &str,
    trace_id: &str,
    reply_to: Option<&ReplyTo>,
    need: &NeedsApproval,
    policy: &ApprovalPolicy,
) -> Result<Option<Uuid>> {
    let mut preview = need.arguments.clone();
    Redactor::global().redact_json(&mut preview);
    let mut evidence = need.evidence.clone();
    if let Some(e) = evidence.as_mut() {
        Redactor::global().redact_json(e);
    }
    let request_id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO approval_requests (project_id, request_id, run_id, step_index, kind, agent, tool, arguments, \
         args_sha256, preview, reason, evidence, required_approvals, approvers, trace_id, reply_to, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now() + make_interval(secs => $17)) \
         ON CONFLICT (project_id, run_id, step_index) DO NOTHING RETURNING request_id",
    )
    .bind(project)
    .bind(request_id)
    .bind(run_id)
    .bind(need.step_index)
    .bind(need.kind.as_str())
    .bind(agent)
    .bind(&need.tool)
    .bind(&need.arguments)
    .bind(&need.args_sha256)
    .bind(&preview)
    .bind(cut(&need.reason, 2000))
    .bind(&evidence)
    .bind(policy.required)
    .bind(&policy.approvers)
    .bind(trace_id)
    .bind(reply_to.map(|r| serde_json::to_value(r).expect("serialisable")))
    .bind(policy.ttl_seconds as f64)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = inserted else {
        return Ok(None);
    };
    audit::record(
        conn,
        Entry {
            trace_id: Some(trace_id.to_string()),
            ..Entry::ok(
                "runtime",
                "approval.request",
                id.to_string(),
                json!({"run_id": run_id, "kind": need.kind.as_str(), "tool": need.tool,
                       "args_sha256": need.args_sha256, "required_approvals": policy.required}),
            )
        },
    )
    .await?;
    if let Some(r) = reply_to {
        let what = match need.kind {
            RequestKind::Approval => "Approval needed",
            RequestKind::Proposal => "Proposal",
        };
        let mut text = format!(
            "{what} ({} of {} approvers): {} wants to call {}\nArguments: {}\nWhy: {}",
            policy.required,
            if policy.approvers.is_empty() {
                "any".to_string()
            } else {
                policy.approvers.len().to_string()
            },
            agent,
            need.tool,
            preview,
            cut(&need.reason, 500),
        );
        if let Some(e) = &evidence {
            if let Some(d) = e.get("dry_run").filter(|d| !d.is_null()) {
                text.push_str(&format!(
                    "\nDry run: {}",
                    cut(&d["result"].to_string(), 500)
                ));
            }
            if let Some(rb) = e.get("rollback_tool").and_then(Value::as_str) {
                text.push_str(&format!("\nRollback: {rb}"));
            }
        }
        let body = json!({
            "text": text,
            "buttons": [
                {"label": "Approve", "data": chat_data(id, Decision::Approve)},
                {"label": "Reject", "data": chat_data(id, Decision::Reject)},
            ]
        });
        chat(conn, project, run_id, r, &body, trace_id).await?;
    }
    Ok(Some(id))
}

/// Queue a message to a chat (kind `approval`). Shadow runs never message anybody (the
/// PostgreSQL guard refuses); that refusal is not an error here.
pub async fn chat(
    conn: &mut PgConnection,
    project: &str,
    run_id: Uuid,
    to: &ReplyTo,
    body: &Value,
    trace_id: &str,
) -> Result<()> {
    let mut sp = conn.begin().await?;
    let res = sqlx::query(
        "INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id) \
         VALUES ($1, $2, $3, $4, $5, 'approval', $6, $7)",
    )
    .bind(project)
    .bind(Uuid::now_v7())
    .bind(run_id)
    .bind(&to.channel)
    .bind(&to.conversation)
    .bind(body)
    .bind(trace_id)
    .execute(&mut *sp)
    .await;
    match res {
        Ok(_) => Ok(sp.commit().await?),
        Err(e) => {
            let err = Error::from(e);
            sp.rollback().await?;
            if err.code == ErrorCode::RunShadowOutbound {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The result of one decision.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DecisionResult {
    /// False when this approver had already decided (the same approver counts once).
    pub counted: bool,
    /// The request after the decision.
    pub request: ApprovalView,
}

/// Decisions on approval requests (HTTP, CLI and chat all end here).
#[derive(Clone)]
pub struct ApprovalService {
    control: ControlPlane,
    minter: Option<Arc<dyn TokenMinter>>,
}

impl ApprovalService {
    pub fn new(control: ControlPlane, minter: Option<Arc<dyn TokenMinter>>) -> Self {
        Self { control, minter }
    }

    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The approval policy of the current project's active Project contract.
    pub async fn policy(control: &ControlPlane) -> Result<ApprovalPolicy> {
        let project = tenancy::require()?;
        match control
            .active_typed(ContractKind::Project, project.as_str())
            .await
        {
            Ok((_, Contract::Project(p))) => Ok(ApprovalPolicy::from_project(Some(&p))),
            Ok(_) => Ok(ApprovalPolicy::from_project(None)),
            Err(e) if e.code == ErrorCode::ContractNotFound => {
                Ok(ApprovalPolicy::from_project(None))
            }
            Err(e) => Err(e),
        }
    }

    /// The chat user → principal mapping of the active Project contract.
    pub async fn chat_principal(&self, channel: &str, user: &str) -> Result<Option<String>> {
        let project = tenancy::require()?;
        match self
            .control
            .active_typed(ContractKind::Project, project.as_str())
            .await
        {
            Ok((_, Contract::Project(p))) => Ok(p
                .acl
                .chat_approvers
                .iter()
                .find(|c| c.channel.as_str() == channel && c.user == user)
                .map(|c| c.principal.0.clone())),
            Ok(_) => Ok(None),
            Err(e) if e.code == ErrorCode::ContractNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, state: Option<&str>, limit: i64) -> Result<Vec<ApprovalView>> {
        if let Some(s) = state
            && !matches!(s, "pending" | "approved" | "rejected" | "expired")
        {
            return Err(Error::new(
                ErrorCode::ReqInvalidParam,
                "state must be one of pending, approved, rejected, expired",
            ));
        }
        let mut tx = self.control.db().tenant().await?;
        let rows: Vec<ApprovalView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{VIEW} WHERE ($1::text IS NULL OR r.state = $1) ORDER BY r.created_at DESC LIMIT $2"
        )))
        .bind(state)
        .bind(limit.clamp(1, 500))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn get(&self, id: Uuid) -> Result<ApprovalView> {
        let mut tx = self.control.db().tenant().await?;
        let v = view(&mut tx, id).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Record one decision by `principal` (already authenticated by the caller: an API key
    /// with the approver role, the CLI, or a chat user mapped in the Project contract) and
    /// apply the verdict: reject fails the run (`E-APPROVAL-001`), quorum mints the token and
    /// re-queues the run. One tenant transaction; a late decision changes nothing
    /// (`E-APPROVAL-004`).
    pub async fn decide(
        &self,
        principal: &str,
        via: &str,
        id: Uuid,
        decision: Decision,
        comment: Option<&str>,
    ) -> Result<DecisionResult> {
        let project = tenancy::require()?;
        let comment = comment.map(|c| cut(c, 2000));
        let mut tx = self.control.db().tenant().await?;
        let row: Option<Locked> = sqlx::query_as(
            "SELECT state, approvers, required_approvals, expires_at <= now() AS expired, run_id, agent, tool, \
             args_sha256, reply_to, trace_id FROM approval_requests WHERE request_id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(Locked {
            state,
            approvers,
            required_approvals: required,
            expired,
            run_id,
            agent,
            tool,
            args_sha256,
            reply_to,
            trace_id,
        }) = row
        else {
            return Err(not_found());
        };
        let reply_to: Option<ReplyTo> = reply_to.and_then(|v| serde_json::from_value(v).ok());
        let audit_denied = |code: ErrorCode, why: &str| Entry {
            trace_id: Some(trace_id.clone()),
            ..Entry::denied(
                principal,
                "approval.decide",
                id.to_string(),
                code.as_str(),
                json!({"decision": decision.as_str(), "via": via, "reason": why}),
            )
        };
        if state == "pending" && expired {
            // Past its expiry but not reaped yet: expire it now, like the reaper would.
            expire_one(
                &mut tx,
                project.as_str(),
                id,
                run_id,
                &trace_id,
                reply_to.as_ref(),
            )
            .await?;
            audit::record(
                &mut tx,
                audit_denied(ErrorCode::ApprovalAlreadyDecided, "expired"),
            )
            .await?;
            tx.commit().await?;
            return Err(late("expired"));
        }
        if state != "pending" {
            audit::record(
                &mut tx,
                audit_denied(ErrorCode::ApprovalAlreadyDecided, &state),
            )
            .await?;
            tx.commit().await?;
            return Err(late(&state));
        }
        if !eligible(&approvers, principal) {
            audit::record(
                &mut tx,
                audit_denied(ErrorCode::ApprovalNotEligible, "not an eligible approver"),
            )
            .await?;
            tx.commit().await?;
            return Err(Error::new(
                ErrorCode::ApprovalNotEligible,
                "you are not an eligible approver of this request",
            ));
        }
        let counted = sqlx::query(
            "INSERT INTO approval_decisions (project_id, request_id, approver, decision, comment, via, trace_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(project.as_str())
        .bind(id)
        .bind(principal)
        .bind(decision.as_str())
        .bind(&comment)
        .bind(via)
        .bind(&trace_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let decisions: Vec<(String, String)> = sqlx::query_as(
            "SELECT approver, decision FROM approval_decisions WHERE request_id = $1 ORDER BY decided_at, approver",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let decisions: Vec<(String, Decision)> = decisions
            .into_iter()
            .filter_map(|(a, d)| Decision::parse(&d).map(|d| (a, d)))
            .collect();
        let verdict = tally(required, &decisions);
        match &verdict {
            Verdict::Pending { .. } => {}
            Verdict::Rejected { by } => {
                let why = comment.as_deref().unwrap_or("no reason given");
                sqlx::query(
                    "UPDATE approval_requests SET state = 'rejected', decided_by = $2, decision_comment = $3, \
                     decided_at = now() WHERE request_id = $1",
                )
                .bind(id)
                .bind(vec![by.clone()])
                .bind(&comment)
                .execute(&mut *tx)
                .await?;
                let msg = format!("approval rejected by {by}: {why}");
                fail_waiting_run(&mut tx, run_id, ErrorCode::ApprovalRejected, &msg).await?;
                if let Some(r) = &reply_to {
                    chat(
                        &mut tx,
                        project.as_str(),
                        run_id,
                        r,
                        &json!({"text": format!("Rejected by {by}: {why}. The run stops ({}).", ErrorCode::ApprovalRejected.as_str())}),
                        &trace_id,
                    )
                    .await?;
                }
            }
            Verdict::Approved { approvers: who } => {
                let Some(minter) = &self.minter else {
                    return Err(Error::new(
                        ErrorCode::ApprovalUnavailable,
                        "this process cannot mint approval tokens",
                    ));
                };
                let ttl: i64 = sqlx::query_scalar(
                    "SELECT greatest(60, extract(epoch FROM (expires_at - created_at))::bigint) FROM approval_requests WHERE request_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let token = minter.mint(&MintRequest {
                    project: project.as_str(),
                    agent: &agent,
                    run_id,
                    tool: &tool,
                    args_sha256: &args_sha256,
                    approvers: who,
                    ttl_seconds: ttl,
                })?;
                sqlx::query(
                    "UPDATE approval_requests SET state = 'approved', token = $2, decided_by = $3, \
                     decided_at = now() WHERE request_id = $1",
                )
                .bind(id)
                .bind(&token)
                .bind(who)
                .execute(&mut *tx)
                .await?;
                // Back to the queue (NOTIFY wakes a worker); it resumes from the journal.
                sqlx::query(
                    "UPDATE runs SET state = 'queued', run_after = now(), updated_at = now() \
                     WHERE run_id = $1 AND state = 'waiting_approval'",
                )
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
                if let Some(r) = &reply_to {
                    chat(
                        &mut tx,
                        project.as_str(),
                        run_id,
                        r,
                        &json!({"text": format!("Approved by {}. Resuming the run.", who.join(", "))}),
                        &trace_id,
                    )
                    .await?;
                }
            }
        }
        audit::record(
            &mut tx,
            Entry {
                trace_id: Some(trace_id.clone()),
                ..Entry::ok(
                    principal,
                    "approval.decide",
                    id.to_string(),
                    json!({"decision": decision.as_str(), "via": via, "counted": counted,
                    "run_id": run_id, "outcome": match &verdict {
                        Verdict::Pending { .. } => "pending",
                        Verdict::Approved { .. } => "approved",
                        Verdict::Rejected { .. } => "rejected",
                    }}),
                )
            },
        )
        .await?;
        let request = view(&mut tx, id).await?;
        tx.commit().await?;
        Ok(DecisionResult { counted, request })
    }
}

/// An approval request locked for a decision.
#[derive(sqlx::FromRow)]
struct Locked {
    state: String,
    approvers: Vec<String>,
    required_approvals: i32,
    expired: bool,
    run_id: Uuid,
    agent: String,
    tool: String,
    args_sha256: String,
    reply_to: Option<Value>,
    trace_id: String,
}

fn not_found() -> Error {
    Error::new(ErrorCode::ApprovalNotFound, "approval request not found")
}

fn late(state: &str) -> Error {
    Error::new(
        ErrorCode::ApprovalAlreadyDecided,
        format!("this request is already {state}; your decision changes nothing"),
    )
    .with_details(json!({"state": state}))
}

async fn view(conn: &mut PgConnection, id: Uuid) -> Result<ApprovalView> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE r.request_id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(not_found)
}

async fn fail_waiting_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    code: ErrorCode,
    message: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET state = 'failed', error_code = $2, error_message = $3, finished_at = now(), \
         worker_id = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE run_id = $1 AND state = 'waiting_approval'",
    )
    .bind(run_id)
    .bind(code.as_str())
    .bind(message)
    .execute(conn)
    .await?;
    Ok(())
}

async fn expire_one(
    conn: &mut PgConnection,
    project: &str,
    id: Uuid,
    run_id: Uuid,
    trace_id: &str,
    reply_to: Option<&ReplyTo>,
) -> Result<()> {
    sqlx::query(
        "UPDATE approval_requests SET state = 'expired', decided_at = now() WHERE request_id = $1 AND state = 'pending'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    fail_waiting_run(
        conn,
        run_id,
        ErrorCode::ApprovalExpired,
        "approval request expired before reaching its quorum",
    )
    .await?;
    audit::record(
        conn,
        Entry {
            trace_id: Some(trace_id.to_string()),
            ..Entry::denied(
                "reaper",
                "approval.expire",
                id.to_string(),
                ErrorCode::ApprovalExpired.as_str(),
                json!({"run_id": run_id}),
            )
        },
    )
    .await?;
    if let Some(r) = reply_to {
        chat(
            conn,
            project,
            run_id,
            r,
            &json!({"text": format!("The approval request expired; the run stops ({}).", ErrorCode::ApprovalExpired.as_str())}),
            trace_id,
        )
        .await?;
    }
    Ok(())
}

/// The reaper's part: expire pending requests past `expires_at` in every project (found in
/// worker scope; each expired in its own tenant transaction with its audit row and chat
/// message). Returns how many expired.
pub async fn expire_due(pool: &PgPool, control: &ControlPlane) -> Result<u64> {
    let mut tx = awooop_store::tenancy::worker_tx(pool).await?;
    let due: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT project_id, request_id FROM approval_requests WHERE state = 'pending' AND expires_at < now() LIMIT 500",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut n = 0;
    for (p, id) in due {
        let Ok(project) = ProjectId::parse(&p) else {
            continue;
        };
        let done = tenancy::scope(project.clone(), async {
            let mut tx = control.db().tenant().await?;
            let row: Option<(Uuid, String, Option<Value>)> = sqlx::query_as(
                "SELECT run_id, trace_id, reply_to FROM approval_requests \
                 WHERE request_id = $1 AND state = 'pending' AND expires_at < now() FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((run_id, trace_id, reply_to)) = row else {
                return Ok::<_, Error>(false);
            };
            let reply_to: Option<ReplyTo> = reply_to.and_then(|v| serde_json::from_value(v).ok());
            expire_one(
                &mut tx,
                project.as_str(),
                id,
                run_id,
                &trace_id,
                reply_to.as_ref(),
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        n += u64::from(done);
    }
    Ok(n)
}

/// Approved tokens of a run's waiting steps (step index → token), for the resuming worker.
pub async fn approved_tokens(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<(i32, String)>> {
    Ok(sqlx::query_as(
        "SELECT step_index, token FROM approval_requests WHERE run_id = $1 AND state = 'approved'",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(who: &str, x: Decision) -> (String, Decision) {
        (who.to_string(), x)
    }

    #[test]
    fn m_of_n_same_approver_counts_once_and_one_reject_rejects() {
        use Decision::*;
        assert_eq!(tally(2, &[]), Verdict::Pending { approvals: 0 });
        assert_eq!(
            tally(2, &[d("alice", Approve), d("alice", Approve)]),
            Verdict::Pending { approvals: 1 }
        );
        assert_eq!(
            tally(2, &[d("alice", Approve), d("bob", Approve)]),
            Verdict::Approved {
                approvers: vec!["alice".into(), "bob".into()]
            }
        );
        assert_eq!(
            tally(
                2,
                &[d("alice", Approve), d("bob", Reject), d("carol", Approve)]
            ),
            Verdict::Rejected { by: "bob".into() }
        );
        // An approver's first decision is the one that counts.
        assert_eq!(
            tally(1, &[d("alice", Approve), d("alice", Reject)]),
            Verdict::Approved {
                approvers: vec!["alice".into()]
            }
        );
    }

    #[test]
    fn eligibility_and_chat_data() {
        assert!(eligible(&[], "anyone"));
        assert!(eligible(&["alice".into()], "alice"));
        assert!(!eligible(&["alice".into()], "mallory"));
        let id = Uuid::now_v7();
        let a = chat_data(id, Decision::Approve);
        assert!(a.len() <= 64, "Telegram callback_data is at most 64 bytes");
        assert_eq!(parse_chat_data(&a), Some((id, Decision::Approve)));
        assert_eq!(
            parse_chat_data(&chat_data(id, Decision::Reject)),
            Some((id, Decision::Reject))
        );
        for bad in [
            "",
            "apr:",
            "apr:x:a",
            &format!("apr:{}:z", id.simple()),
            "other",
        ] {
            assert_eq!(parse_chat_data(bad), None, "{bad}");
        }
    }
}
