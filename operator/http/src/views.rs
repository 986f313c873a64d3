//! Read-only views for the web console (and any other client): a project's contracts with the
//! approvals they still need, one run's timeline under its trace id, the gateway's tools and
//! recent calls, budgets and breakers, channel events and deliveries.
//!
//! Why here and not in each owning crate: every view is a read across several parts (a run's
//! timeline joins the runtime's steps, the model path's reservations, the gateway's call audit
//! and the channel hub's deliveries); none of them decides anything. Each is one tenant
//! transaction (`Db::tenant`, forced row-level security) in the caller's project, so a key of
//! project A can only ever read A's rows, like every other route. The SQL builds the JSON
//! (`json_agg`), and everything that came from a tenant's tools, models or users goes through
//! the one redactor before it leaves.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::extract::{Read, Tenant};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::redact::Redactor;

/// How many recent rows a list view returns (newest first).
const RECENT: i64 = 100;

/// Run one JSON-building query in the caller's tenant scope.
async fn view(
    s: &AppState,
    t: &Tenant<Read>,
    sql: &'static str,
    arg: Option<Uuid>,
) -> Result<Value> {
    let db = s.control.db().clone();
    t.run(scoped_view(db, sql, arg)).await
}

/// One view query in the current tenant scope, redacted.
async fn scoped_view(
    db: awooop_store::tenancy::Db,
    sql: &'static str,
    arg: Option<Uuid>,
) -> Result<Value> {
    let mut tx = db.tenant().await?;
    let mut q = sqlx::query_scalar::<_, Option<Value>>(sql).bind(RECENT);
    if let Some(id) = arg {
        q = q.bind(id);
    }
    let v = q.fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let mut v = v.unwrap_or(Value::Null);
    Redactor::global().redact_json(&mut v);
    Ok(v)
}

/// `GET /v1/control/contracts`: every contract of the project (kind, name) with its latest
/// and active revision, and the published revisions newer than the active one with the open
/// approvals they carry and how many the project requires.
pub async fn contracts(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    const SQL: &str = r#"
SELECT json_build_object(
  'required_approvals', (SELECT required_approvals FROM projects WHERE project_id = awooop_current_project()),
  'limit', $1::bigint,
  'contracts', coalesce((
    SELECT json_agg(c ORDER BY c.kind, c.name) FROM (
      SELECT r.kind, r.name,
             max(r.revision) AS latest_revision,
             a.revision AS active_revision,
             a.revision_id AS active_revision_id,
             a.activated_by, a.activated_at,
             coalesce((
               SELECT json_agg(json_build_object(
                        'revision_id', p.revision_id, 'revision', p.revision,
                        'body_hash', p.body_hash, 'published_by', p.published_by,
                        'published_at', p.published_at,
                        'approvers', coalesce((
                          SELECT json_agg(ap.approver ORDER BY ap.approved_at)
                          FROM activation_approvals ap
                          WHERE ap.revision_id = p.revision_id AND ap.consumed_by IS NULL
                            AND ap.void_reason IS NULL AND ap.expires_at > now()), '[]'::json))
                      ORDER BY p.revision DESC)
               FROM contract_revisions p
               WHERE p.kind = r.kind AND p.name = r.name
                 AND p.revision > coalesce(a.revision, 0)), '[]'::json) AS pending
      FROM contract_revisions r
      LEFT JOIN active_revisions a ON a.kind = r.kind AND a.name = r.name
      GROUP BY r.kind, r.name, a.revision, a.revision_id, a.activated_by, a.activated_at
    ) c), '[]'::json))
"#;
    Ok(Json(view(&s, &t, SQL, None).await?))
}

/// `GET /v1/platform/runs/{id}/timeline`: everything that happened to one run, oldest first,
/// under its trace id: state changes (audit), journal steps, model calls (tokens and cost from
/// the budget reservations), tool calls with the gate's decision, outbound messages and their
/// deliveries, and the channel event that started it. 404 `E-RUN-001` for another project's run.
pub async fn run_timeline(
    State(s): State<AppState>,
    t: Tenant<Read>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    const SQL: &str = r#"
WITH run AS (SELECT * FROM runs WHERE run_id = $2),
ev AS (
  SELECT created_at AS at, 'state' AS kind, 'queued' AS title,
         json_build_object('agent', agent, 'mode', mode) AS detail FROM run
  UNION ALL
  SELECT started_at, 'state', 'started', json_build_object('attempt', attempt) FROM run
   WHERE started_at IS NOT NULL
  UNION ALL
  SELECT finished_at, 'state', state,
         json_build_object('error_code', error_code, 'error_message', error_message) FROM run
   WHERE finished_at IS NOT NULL
  UNION ALL
  SELECT l.at, CASE WHEN l.action IN ('run.approve', 'run.reject') THEN 'approval' ELSE 'audit' END,
         l.action, json_build_object('actor', l.actor, 'outcome', l.outcome, 'code', l.code,
                                     'details', l.details)
    FROM audit_log l, run WHERE l.trace_id = run.trace_id AND l.action <> 'tool.call'
  UNION ALL
  SELECT l.at, 'tool', coalesce(l.target, 'tool call'),
         json_build_object('decision', CASE l.outcome WHEN 'ok' THEN 'allowed' ELSE 'denied' END,
                           'code', l.code, 'result', 'refused by the runtime guard',
                           'details', l.details)
    FROM audit_log l, run WHERE l.trace_id = run.trace_id AND l.action = 'tool.call'
  UNION ALL
  SELECT s.finished_at, 'step', s.step_key || ' (' || s.step_type || ')',
         json_build_object('index', s.step_index, 'attempt', s.attempt, 'status', s.status,
                           'output', s.output, 'error_code', s.error_code, 'span_id', s.span_id)
    FROM run_steps s, run WHERE s.run_id = run.run_id
  UNION ALL
  SELECT b.created_at, 'model', b.provider || '/' || b.model,
         json_build_object('state', b.state, 'reserved_tokens', b.tokens,
                           'tokens', b.actual_tokens, 'cost_micros', b.actual_micros,
                           'settled_at', b.settled_at)
    FROM budget_reservations b, run WHERE b.run_id = run.run_id
  UNION ALL
  SELECT m.at, 'tool', m.tool,
         json_build_object('decision', m.decision, 'code', m.code, 'result', m.result_status,
                           'latency_us', m.latency_us, 'environment', m.environment,
                           'truncated', m.truncated, 'details', m.details)
    FROM mcp_call_audit m, run WHERE m.trace_id = run.trace_id
  UNION ALL
  -- Tool-call approval requests: the redacted preview and the evidence, never the raw
  -- arguments or the minted token.
  SELECT q.created_at, 'approval', 'approval requested for ' || q.tool,
         json_build_object('request_id', q.request_id, 'state', q.state, 'reason', q.reason,
                           'preview', q.preview, 'evidence', q.evidence,
                           'required_approvals', q.required_approvals,
                           'decided_by', q.decided_by, 'expires_at', q.expires_at)
    FROM approval_requests q, run WHERE q.run_id = run.run_id
  UNION ALL
  SELECT d.decided_at, 'approval', d.approver || CASE d.decision WHEN 'approve' THEN ' approved ' ELSE ' rejected ' END || q.tool,
         json_build_object('request_id', d.request_id, 'comment', d.comment, 'via', d.via)
    FROM approval_decisions d JOIN approval_requests q ON q.request_id = d.request_id, run
   WHERE q.run_id = run.run_id
  UNION ALL
  SELECT u.used_at, 'approval', 'approval token used for ' || u.tool,
         json_build_object('approver', u.approver)
    FROM mcp_approval_uses u, run WHERE u.run_id = run.run_id
  UNION ALL
  SELECT o.created_at, 'outbound', o.kind || ' to ' || o.channel,
         json_build_object('conversation', o.conversation, 'status', o.status, 'body', o.body)
    FROM outbound_messages o, run WHERE o.run_id = run.run_id
  UNION ALL
  SELECT d.at, 'delivery', d.channel || ' ' || d.status,
         json_build_object('attempt', d.attempt, 'part', d.part, 'http_status', d.http_status,
                           'code', d.code, 'latency_ms', d.latency_ms)
    FROM channel_deliveries d JOIN outbound_messages o ON o.message_id = d.message_id, run
   WHERE o.run_id = run.run_id
  UNION ALL
  SELECT e.received_at, 'event', e.provider || ' ' || e.kind,
         json_build_object('channel', e.channel, 'conversation', e.conversation, 'text', e.text)
    FROM conversation_events e, run WHERE e.run_id = run.run_id
)
SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM run) THEN NULL ELSE json_build_object(
  'run_id', (SELECT run_id FROM run),
  'agent', (SELECT agent FROM run),
  'state', (SELECT state FROM run),
  'mode', (SELECT mode FROM run),
  'trace_id', (SELECT trace_id FROM run),
  'created_at', (SELECT created_at FROM run),
  'finished_at', (SELECT finished_at FROM run),
  'output', (SELECT output FROM run),
  'limit', $1::bigint,
  'events', coalesce((SELECT json_agg(ev ORDER BY ev.at, ev.kind) FROM ev), '[]'::json)) END
"#;
    let run =
        Uuid::parse_str(&id).map_err(|_| Error::new(ErrorCode::RunNotFound, "run not found"))?;
    let v = view(&s, &t, SQL, Some(run)).await?;
    if v.is_null() {
        return Err(Error::new(ErrorCode::RunNotFound, "run not found"));
    }
    Ok(Json(v))
}

/// `GET /v1/platform/gateway`: the tools of the active MCP gateway revision(s) by provider,
/// with risk and grants; the most recent calls (the gateway's and the runtime guard's
/// refusals); denials counted by code.
pub async fn gateway(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    const SQL: &str = r#"
WITH active AS (SELECT revision_id FROM active_revisions WHERE kind = 'mcp_gateway'),
-- Calls the gateway decided (mcp_call_audit) and calls the runtime's guard refused before
-- they reached it (audit_log `tool.call`, e.g. a tool no active gateway contract registers).
calls AS (
  SELECT at, call_id::text AS call_id, trace_id, run_id, agent, tool, environment, mode,
         decision, code, result_status, latency_us, truncated
    FROM mcp_call_audit
  UNION ALL
  SELECT g.at, g.audit_id::text, coalesce(g.trace_id, ''), g.run_id,
         coalesce((SELECT r.agent FROM runs r WHERE r.run_id = g.run_id), g.actor),
         coalesce(g.target, ''), '', coalesce(g.details->>'mode', ''), 'denied', g.code,
         'refused by the runtime guard', 0, false
    FROM (SELECT *, CASE WHEN details->>'run_id' ~ '^[0-9a-f-]{36}$'
                         THEN (details->>'run_id')::uuid END AS run_id
            FROM audit_log WHERE action = 'tool.call' AND outcome <> 'ok') g
)
SELECT json_build_object(
  'tools', coalesce((
    SELECT json_agg(json_build_object(
             'exposed_name', t.exposed_name, 'provider', t.provider,
             'upstream_name', t.upstream_name, 'risk', t.risk,
             'environments', t.environments, 'requires_approval', t.requires_approval,
             'enabled', t.enabled,
             'grants', coalesce((
               SELECT json_agg(json_build_object('agent', g.agent, 'environments', g.environments)
                               ORDER BY g.agent)
               FROM mcp_grants g
               WHERE g.revision_id = t.revision_id AND g.exposed_name = t.exposed_name), '[]'::json))
           ORDER BY t.provider, t.exposed_name)
    FROM mcp_tools t WHERE t.revision_id IN (SELECT revision_id FROM active)), '[]'::json),
  'recent_calls', coalesce((
    SELECT json_agg(m ORDER BY m.at DESC) FROM (
      SELECT * FROM calls ORDER BY at DESC LIMIT $1) m), '[]'::json),
  'denials_by_code', coalesce((
    SELECT json_agg(d ORDER BY d.count DESC, d.code) FROM (
      SELECT coalesce(code, 'unknown') AS code, count(*) AS count, max(at) AS last_at
      FROM calls WHERE decision = 'denied' GROUP BY 1) d), '[]'::json))
"#;
    Ok(Json(view(&s, &t, SQL, None).await?))
}

/// `GET /v1/platform/budgets`: the ledger rows (spend and reservations against limits per
/// scope and period), the project's model breakers, the most recent reservations.
pub async fn budgets(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    Ok(Json(view(&s, &t, BUDGETS_SQL, None).await?))
}

/// The budgets view of the current tenant scope, as `GET /v1/platform/budgets` answers it:
/// `awooop budget show` prints this (one query, so the CLI and the API cannot drift).
pub async fn budgets_in_scope(db: awooop_store::tenancy::Db) -> Result<Value> {
    scoped_view(db, BUDGETS_SQL, None).await
}

const BUDGETS_SQL: &str = r#"
SELECT json_build_object(
  'ledger', coalesce((
    SELECT json_agg(l ORDER BY l.period_start DESC, l.scope) FROM (
      SELECT scope, period, period_start, token_limit, currency_limit_micros, reserved_tokens,
             spent_tokens, reserved_micros, spent_micros, tripped_at, updated_at
      FROM budget_ledger ORDER BY period_start DESC LIMIT $1) l), '[]'::json),
  'breakers', coalesce((
    SELECT json_agg(json_build_object('breaker', breaker, 'failures', failures,
                                      'open_until', open_until, 'reason', reason,
                                      'open', coalesce(open_until > now(), false),
                                      'updated_at', updated_at))
    FROM model_breakers), '[]'::json),
  'recent', coalesce((
    SELECT json_agg(r ORDER BY r.created_at DESC) FROM (
      SELECT created_at, run_id, agent, provider, model, state, tokens AS reserved_tokens,
             actual_tokens, actual_micros
      FROM budget_reservations ORDER BY created_at DESC LIMIT $1) r), '[]'::json))
"#;

/// `GET /v1/platform/channels`: the most recent inbound conversation events and outbound
/// deliveries of the project's channels.
pub async fn channels(State(s): State<AppState>, t: Tenant<Read>) -> Result<impl IntoResponse> {
    const SQL: &str = r#"
SELECT json_build_object(
  'events', coalesce((
    SELECT json_agg(e ORDER BY e.received_at DESC) FROM (
      SELECT received_at, event_id, channel, provider, conversation, kind, text, trace_id,
             run_id, mirrored
      FROM conversation_events ORDER BY received_at DESC LIMIT $1) e), '[]'::json),
  'deliveries', coalesce((
    SELECT json_agg(d ORDER BY d.at DESC) FROM (
      SELECT at, delivery_id, message_id, channel, attempt, part, status, http_status, code,
             latency_ms
      FROM channel_deliveries ORDER BY at DESC LIMIT $1) d), '[]'::json))
"#;
    Ok(Json(view(&s, &t, SQL, None).await?))
}
