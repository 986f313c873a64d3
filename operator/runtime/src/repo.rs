//! SQL of the runtime. Tenant functions run inside a tenant transaction; the `worker_*`
//! functions run inside a worker-scoped transaction ([`worker_tx`]), the only place that sees
//! runs of every project, and only the `runs` table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::state::RunState;
use super::trace::TraceContext;
use super::{RunAccepted, RunView, StepView};
use awooop_core::error::{Error, ErrorCode, Result};

const RUN_COLUMNS: &str = "run_id, agent, mode, state, input_hash, agent_revision_id, agent_body_hash, \
    project_revision_id, project_body_hash, trace_id, attempt, max_attempts, output, error_code, \
    error_message, created_at, started_at, finished_at, deadline_at";

pub struct NewRun<'a> {
    pub project: &'a str,
    pub run_id: Uuid,
    pub agent: &'a str,
    pub mode: &'a str,
    pub input: &'a Value,
    pub input_hash: &'a str,
    pub agent_revision_id: Uuid,
    pub agent_body_hash: &'a str,
    pub project_revision_id: Option<Uuid>,
    pub project_body_hash: Option<&'a str>,
    pub trace: &'a TraceContext,
    pub idempotency_key: Option<&'a str>,
    pub reply_to: Option<&'a super::outbound::ReplyTo>,
    pub max_attempts: i32,
    pub lease_seconds: i32,
    pub max_concurrent: i32,
    pub deadline_seconds: i64,
}

pub async fn insert_run(conn: &mut PgConnection, r: &NewRun<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
         project_revision_id, project_body_hash, trace_id, span_id, idempotency_key, max_attempts, deadline_at, reply_to, lease_seconds, max_concurrent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now() + make_interval(secs => $15), $16, $17, $18)",
    )
    .bind(r.project)
    .bind(r.run_id)
    .bind(r.agent)
    .bind(r.mode)
    .bind(r.input)
    .bind(r.input_hash)
    .bind(r.agent_revision_id)
    .bind(r.agent_body_hash)
    .bind(r.project_revision_id)
    .bind(r.project_body_hash)
    .bind(&r.trace.trace_id)
    .bind(&r.trace.span_id)
    .bind(r.idempotency_key)
    .bind(r.max_attempts)
    .bind(r.deadline_seconds as f64)
    .bind(r.reply_to.map(|x| serde_json::to_value(x).expect("serialisable")))
    .bind(r.lease_seconds)
    .bind(r.max_concurrent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns of a batch of runs of one project, as the arrays an `unnest` insert binds.
struct RunColumns<'a> {
    run_ids: Vec<Uuid>,
    agents: Vec<&'a str>,
    modes: Vec<&'a str>,
    inputs: Vec<Value>,
    input_hashes: Vec<&'a str>,
    agent_revs: Vec<Uuid>,
    agent_hashes: Vec<&'a str>,
    project_revs: Vec<Option<Uuid>>,
    project_hashes: Vec<Option<&'a str>>,
    trace_ids: Vec<&'a str>,
    span_ids: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    max_attempts: Vec<i32>,
    deadlines: Vec<f64>,
    reply_tos: Vec<Option<Value>>,
    leases: Vec<i32>,
    max_concurrent: Vec<i32>,
}

impl<'a> RunColumns<'a> {
    /// Fails closed when a run of another project slipped into the batch: the statement
    /// writes every row under `project`.
    fn of(project: &str, rs: &'a [NewRun<'a>]) -> Result<Self> {
        let n = rs.len();
        let mut c = RunColumns {
            run_ids: Vec::with_capacity(n),
            agents: Vec::with_capacity(n),
            modes: Vec::with_capacity(n),
            inputs: Vec::with_capacity(n),
            input_hashes: Vec::with_capacity(n),
            agent_revs: Vec::with_capacity(n),
            agent_hashes: Vec::with_capacity(n),
            project_revs: Vec::with_capacity(n),
            project_hashes: Vec::with_capacity(n),
            trace_ids: Vec::with_capacity(n),
            span_ids: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            deadlines: Vec::with_capacity(n),
            reply_tos: Vec::with_capacity(n),
            leases: Vec::with_capacity(n),
            max_concurrent: Vec::with_capacity(n),
        };
        for r in rs {
            if r.project != project {
                return Err(Error::new(
                    ErrorCode::TenantMissing,
                    "runs of one batch belong to one project",
                ));
            }
            c.run_ids.push(r.run_id);
            c.agents.push(r.agent);
            c.modes.push(r.mode);
            c.inputs.push(r.input.clone());
            c.input_hashes.push(r.input_hash);
            c.agent_revs.push(r.agent_revision_id);
            c.agent_hashes.push(r.agent_body_hash);
            c.project_revs.push(r.project_revision_id);
            c.project_hashes.push(r.project_body_hash);
            c.trace_ids.push(r.trace.trace_id.as_str());
            c.span_ids.push(r.trace.span_id.as_str());
            c.keys.push(r.idempotency_key);
            c.max_attempts.push(r.max_attempts);
            c.deadlines.push(r.deadline_seconds as f64);
            c.reply_tos.push(
                r.reply_to
                    .map(|x| serde_json::to_value(x).expect("serialisable")),
            );
            c.leases.push(r.lease_seconds);
            c.max_concurrent.push(r.max_concurrent);
        }
        Ok(c)
    }
}

/// Insert many runs of one project, their idempotency keys and their audit rows in **one
/// statement** (one round trip instead of four: the channel hub's group commit is bound by
/// them). Nothing is written and `false` is returned when one of the keys already has a row,
/// as [`idempotency_keys_taken`] would say: the caller then takes the one-by-one path. A key
/// taken concurrently after the check fails the statement on the primary key, as before.
/// The run triggers (run events, the statement-level `awooop_runs` NOTIFY) fire as for
/// [`insert_run`]; the audit columns come redacted from [`awooop_store::audit::Columns`].
pub async fn insert_runs_keys_audit(
    conn: &mut PgConnection,
    project: &str,
    rs: &[NewRun<'_>],
    keys: &[(&str, &str, Uuid, i64)],
    audit: &awooop_store::audit::Columns,
) -> Result<bool> {
    insert_runs_keys_audit_guarded(conn, project, rs, keys, audit, None).await
}

/// The statement of [`insert_runs_keys_audit`], once without and once with a guard: the check
/// of a run basis (`RunBasis::check_sql`, parameters `$31`…`$36`) in the same statement, so
/// a stale basis writes nothing at no round trip of its own.
static INSERT_RUNS_SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let sql = |guard: &str| {
        format!(
            "WITH taken AS (SELECT EXISTS (SELECT 1 FROM unnest($19::text[]) AS q(k) \
               CROSS JOIN LATERAL (SELECT 1 FROM idempotency_keys i WHERE i.key = q.k LIMIT 1) hit){guard} AS yes), \
             r AS (INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, \
               project_revision_id, project_body_hash, trace_id, span_id, idempotency_key, max_attempts, deadline_at, reply_to, lease_seconds, max_concurrent) \
               SELECT $1, r.run_id, r.agent, r.mode, r.input, r.input_hash, r.agent_revision_id, r.agent_body_hash, \
                 r.project_revision_id, r.project_body_hash, r.trace_id, r.span_id, r.idempotency_key, r.max_attempts, \
                 now() + make_interval(secs => r.deadline), r.reply_to, r.lease_seconds, r.max_concurrent \
               FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::uuid[], $8::text[], $9::uuid[], \
                 $10::text[], $11::text[], $12::text[], $13::text[], $14::int4[], $15::float8[], $16::jsonb[], $17::int4[], $18::int4[]) \
               AS r(run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash, project_revision_id, \
                 project_body_hash, trace_id, span_id, idempotency_key, max_attempts, deadline, reply_to, lease_seconds, max_concurrent) \
               WHERE NOT (SELECT yes FROM taken)), \
             k AS (INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at) \
               SELECT $1, x.k, x.h, x.r, now() + make_interval(secs => x.ttl) \
               FROM unnest($19::text[], $20::text[], $21::uuid[], $22::float8[]) AS x(k, h, r, ttl) \
               WHERE NOT (SELECT yes FROM taken)), \
             a AS (INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details) \
               SELECT $1, * FROM unnest($23::uuid[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[], \
                 $29::text[], $30::jsonb[]) WHERE NOT (SELECT yes FROM taken)) \
             SELECT yes FROM taken"
        )
    };
    [
        sql(""),
        sql(&format!(" OR NOT {}", crate::RunBasis::check_sql(31))),
    ]
});

/// [`insert_runs_keys_audit`], writing nothing (`false`) also when `guard`, the basis the
/// runs were prepared on, is no longer current (checked by the statement itself).
pub async fn insert_runs_keys_audit_guarded(
    conn: &mut PgConnection,
    project: &str,
    rs: &[NewRun<'_>],
    keys: &[(&str, &str, Uuid, i64)],
    audit: &awooop_store::audit::Columns,
    guard: Option<&crate::RunBasis>,
) -> Result<bool> {
    let c = RunColumns::of(project, rs)?;
    let key_names: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let key_hashes: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let key_runs: Vec<Uuid> = keys.iter().map(|k| k.2).collect();
    let key_ttls: Vec<f64> = keys.iter().map(|k| k.3 as f64).collect();
    // Every data-modifying CTE runs exactly once, on the snapshot the `taken` check read.
    // The check probes each key by (project, key) (why not `key = ANY(...)`: [`idempotency_keys_taken`]).
    let sql: &'static str = INSERT_RUNS_SQL[usize::from(guard.is_some())].as_str();
    let q = sqlx::query_scalar(sql)
        .bind(project)
        .bind(&c.run_ids)
        .bind(&c.agents)
        .bind(&c.modes)
        .bind(&c.inputs)
        .bind(&c.input_hashes)
        .bind(&c.agent_revs)
        .bind(&c.agent_hashes)
        .bind(&c.project_revs)
        .bind(&c.project_hashes)
        .bind(&c.trace_ids)
        .bind(&c.span_ids)
        .bind(&c.keys)
        .bind(&c.max_attempts)
        .bind(&c.deadlines)
        .bind(&c.reply_tos)
        .bind(&c.leases)
        .bind(&c.max_concurrent)
        .bind(&key_names)
        .bind(&key_hashes)
        .bind(&key_runs)
        .bind(&key_ttls)
        .bind(&audit.ids)
        .bind(&audit.actors)
        .bind(&audit.actions)
        .bind(&audit.targets)
        .bind(&audit.outcomes)
        .bind(&audit.codes)
        .bind(&audit.traces)
        .bind(&audit.details);
    let q = match guard {
        Some(b) => {
            let (mode, runtime, agent, agent_rev, project, project_rev) = b.check_params();
            q.bind(mode)
                .bind(runtime)
                .bind(agent)
                .bind(agent_rev)
                .bind(project)
                .bind(project_rev)
        }
        None => q,
    };
    let taken: bool = q.fetch_one(conn).await?;
    Ok(!taken)
}

/// Whether any of `keys` already has a row (unexpired or not). A taken key sends the caller
/// to the one-by-one path, which replays, refuses or clears an expired key; a key taken
/// concurrently after this check makes the batch's insert fail on the primary key instead.
///
/// Each key is probed on its own (a LATERAL subquery with LIMIT 1 is a parameterised nested
/// loop: one unique-index lookup by (project, key) per key). `key = ANY($1)` let the planner,
/// whenever its statistics said the project had few keys (a new project, a burst faster than
/// autovacuum's ANALYZE), read every key of the project from the primary key and filter
/// them: O(keys ever received) per check, ~5 ms per inbound group commit at 23,000 keys
/// (docs/benchmarks.md "channels (session 8)").
pub async fn idempotency_keys_taken(conn: &mut PgConnection, keys: &[&str]) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM unnest($1::text[]) AS q(k) \
         CROSS JOIN LATERAL (SELECT 1 FROM idempotency_keys i WHERE i.key = q.k LIMIT 1) hit)",
    )
    .bind(keys)
    .fetch_one(conn)
    .await?)
}

/// Insert many idempotency keys of one project: (key, request hash, run, ttl seconds).
pub async fn insert_idempotency_keys(
    conn: &mut PgConnection,
    project: &str,
    rows: &[(&str, &str, Uuid, i64)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let runs: Vec<Uuid> = rows.iter().map(|r| r.2).collect();
    let ttls: Vec<f64> = rows.iter().map(|r| r.3 as f64).collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at) \
         SELECT $1, k, h, r, now() + make_interval(secs => t) FROM unnest($2::text[], $3::text[], $4::uuid[], $5::float8[]) AS x(k, h, r, t)",
    )
    .bind(project)
    .bind(&keys)
    .bind(&hashes)
    .bind(&runs)
    .bind(&ttls)
    .execute(conn)
    .await?;
    Ok(())
}

/// The run an unexpired idempotency key already created (same request), a conflict (other
/// request), or None (new key; expired keys are removed here).
pub async fn idempotent_run(
    conn: &mut PgConnection,
    key: &str,
    request_hash: &str,
) -> Result<Option<RunAccepted>> {
    // Serialise concurrent requests with the same key (transaction-scoped).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(awooop_current_project() || '/idem/' || $1, 0))")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    let row: Option<(String, Uuid, bool)> = sqlx::query_as(
        "SELECT request_hash, run_id, expires_at > now() FROM idempotency_keys WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(None),
        Some((_, _, false)) => {
            sqlx::query("DELETE FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(None)
        }
        Some((hash, run_id, true)) => {
            if hash != request_hash {
                return Err(Error::new(
                    ErrorCode::RunIdempotencyConflict,
                    "this Idempotency-Key was used with a different request",
                ));
            }
            let (trace_id, span_id, state, mode): (String, String, String, String) =
                sqlx::query_as("SELECT trace_id, span_id, state, mode FROM runs WHERE run_id = $1")
                    .bind(run_id)
                    .fetch_one(&mut *conn)
                    .await?;
            let trace = TraceContext {
                trace_id,
                span_id,
                sampled: true,
            };
            Ok(Some(RunAccepted {
                run_id,
                traceparent: trace.traceparent(),
                trace_id: trace.trace_id,
                state,
                mode,
                replayed: true,
            }))
        }
    }
}

pub async fn insert_idempotency_key(
    conn: &mut PgConnection,
    project: &str,
    key: &str,
    request_hash: &str,
    run_id: Uuid,
    ttl_seconds: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(project)
    .bind(key)
    .bind(request_hash)
    .bind(run_id)
    .bind(ttl_seconds as f64)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn run(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<RunView>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"
    )))
    .bind(run_id)
    .fetch_optional(conn)
    .await?)
}

pub async fn run_for_update(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<RunView>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1 FOR UPDATE"
    )))
    .bind(run_id)
    .fetch_optional(conn)
    .await?)
}

pub async fn steps(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<StepView>> {
    Ok(sqlx::query_as(
        "SELECT step_index, attempt, step_key, step_type, input_hash, status, output, error_code, span_id, started_at, finished_at \
         FROM run_steps WHERE run_id = $1 ORDER BY step_index, attempt",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?)
}

pub async fn list(
    conn: &mut PgConnection,
    state: Option<RunState>,
    agent: Option<&str>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RunView>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs \
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR agent = $2) \
         AND ($3::timestamptz IS NULL OR (created_at, run_id) < ($3, $4)) \
         ORDER BY created_at DESC, run_id DESC LIMIT $5"
    )))
    .bind(state.map(|s| s.as_str()))
    .bind(agent)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Finish a run. With `attempt` the write is fenced: it only lands if the run is still
/// `running` under that attempt (a late result from a reaped attempt changes nothing).
/// Returns whether a row changed.
pub async fn finish(
    conn: &mut PgConnection,
    run_id: Uuid,
    attempt: Option<i32>,
    to: RunState,
    output: Option<&Value>,
    error: Option<(&str, &str)>,
) -> Result<bool> {
    let res = sqlx::query(
        "UPDATE runs SET state = $2, output = $3, error_code = $4, error_message = $5, \
         finished_at = CASE WHEN $2 IN ('succeeded','failed','cancelled','timed_out') THEN now() ELSE finished_at END, \
         worker_id = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE run_id = $1 AND ($6::int IS NULL OR (attempt = $6 AND state = 'running'))",
    )
    .bind(run_id)
    .bind(to.as_str())
    .bind(output)
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .bind(attempt)
    .execute(conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Approve a waiting run: the waiting step is journaled as completed (so the resumed run
/// continues after it) and the run goes back to the queue.
pub async fn requeue_approved(conn: &mut PgConnection, run_id: Uuid, approver: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, output, trace_id, span_id, started_at) \
         SELECT project_id, run_id, step_index, attempt, step_key, step_type, input_hash, 'succeeded', \
                jsonb_build_object('approved_by', $2::text), trace_id, span_id, now() \
         FROM run_steps WHERE run_id = $1 AND status = 'waiting' AND step_type = 'wait_approval' \
         ORDER BY step_index DESC LIMIT 1 \
         ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(approver)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE runs SET state = 'queued', run_after = now(), updated_at = now() WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The worker-scope transaction (`awooop.scope = worker`): lives in the store with the other
/// database scopes, so modules above the repository (approvals) need not import it from here.
pub use awooop_store::tenancy::worker_tx;

/// A step attempt not yet written.
#[derive(Debug, Clone)]
pub struct PendingStep {
    pub index: i32,
    pub key: String,
    pub step_type: String,
    pub input_hash: String,
    pub status: String,
    pub output: Option<Value>,
    pub error_code: Option<String>,
    pub trace: awooop_core::trace::TraceContext,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// A claimed run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub project_id: String,
    pub run_id: Uuid,
    pub agent: String,
    pub mode: String,
    pub input: Value,
    pub agent_revision_id: Uuid,
    pub trace_id: String,
    pub span_id: String,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub reply_to: Option<Value>,
}

/// Claim up to `n` runnable runs: `FOR NO KEY UPDATE SKIP LOCKED` on the partial queue index, lease
/// them to `worker` and bump the attempt, in one statement.
pub async fn worker_claim(
    pool: &PgPool,
    worker: &str,
    n: i64,
    lease_seconds: f64,
) -> Result<Vec<Claimed>> {
    worker_claim_for(pool, worker, n, lease_seconds, None).await
}

/// [`worker_claim`] limited to one project's runs when `project` is given (the per-project
/// worker Deployments the operator runs: `awooop worker --project P`).
pub async fn worker_claim_for(
    pool: &PgPool,
    worker: &str,
    n: i64,
    lease_seconds: f64,
    project: Option<&str>,
) -> Result<Vec<Claimed>> {
    Ok(worker_claim_round(pool, worker, n, lease_seconds, project)
        .await?
        .runs)
}

/// [`worker_claim_for`], also saying how many projects it passed over (the claim loop).
pub async fn worker_claim_round(
    pool: &PgPool,
    worker: &str,
    n: i64,
    lease_seconds: f64,
    project: Option<&str>,
) -> Result<ClaimRound> {
    let mut tx = claim_tx(pool).await?;
    let round = claim_round_in(&mut tx, worker, n, lease_seconds, project).await?;
    tx.commit().await?;
    Ok(round)
}

/// The claim's transaction: worker scope, and the claim on its generic plan.
///
/// sqlx prepares the claim once per connection, and under PostgreSQL's default
/// `plan_cache_mode = auto` the server compares the generic plan's estimate (a LIMIT and a
/// project it cannot see) with the custom plans' and kept planning the statement afresh at
/// every execution: 0.6 ms of backend CPU per claim for a statement that executes in
/// 0.6-2 ms, paid by every claim batch (docs/benchmarks.md, "Session 15"). The plan does not
/// depend on the parameters' values: its probes are the partial indexes' literal predicates
/// and run ids, so the generic plan is the same plan. Set per transaction, so nothing else the
/// connection runs changes. In the `BEGIN` message: no extra round trip.
///
/// Bitmap scans are off in it too: every statement of a claim reads the queue index in order
/// and stops early (a head, the oldest runs up to a limit), and a bitmap scan reads every
/// matching entry before it sorts (see [`CLAIM_SQL`]).
const CLAIM_BEGIN: &str = "BEGIN; SET LOCAL awooop.scope = 'worker'; SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_bitmapscan = off";

/// A worker-scoped transaction for [`claim_in`] (see [`CLAIM_BEGIN`]).
pub async fn claim_tx(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    awooop_store::tenancy::begin(pool, CLAIM_BEGIN).await
}

/// The claim statement of [`claim_in`]. Public, with the completion's statements, so that
/// `scripts/profile-drain-db.sh` can be checked against it (a unit test below): the script
/// replays the worker's statements to profile them, and a replay of statements the platform
/// no longer runs measures nothing (docs/benchmarks.md, "Session 15").
///
/// The projects come from [`CLAIM_PROJECTS_SQL`], the statement before it: those this claim
/// holds the project lock of (`$4`), each with its running runs counted after the lock
/// (`$5`, `busy`): no other claim can start runs of them until this transaction commits, and
/// a completion only lowers the count, so the count stands (migration 0077). This statement is
/// a new statement and so sees, under READ COMMITTED, every earlier claim of those projects
/// committed.
///
/// Per project, its oldest runnable runs are locked with SKIP LOCKED, at
/// most as many as it may still start: its room is the max_concurrent of its oldest
/// queued run minus its running runs. So a claim never locks runs it cannot start, and a
/// project at its cap with a deep backlog does not stand in front of other projects'
/// runs (before: the `n` oldest runs of the whole queue were locked, then those beyond
/// their project's cap dropped; migration 0073). The projects are visited in the order
/// of their oldest queued run (its `head`, read from the index with max_concurrent, no
/// row fetched: migration 0076), and the nested loop stops as soon as `n` runs are
/// locked: a claim locks only runs it starts. Before, every project with room locked up
/// to `n` of its runs and a sort then kept the `n` oldest of all: with 50 tenants'
/// backlogs a claim of 16 locked (and WAL-logged) 800 rows and released 784 at its
/// commit (docs/benchmarks.md, "Session 15"). The candidates are ranked per project so
/// that the cap holds exactly even if runs of one project carry different
/// max_concurrent values.
///
/// Each project's head and its max_concurrent are read in one probe (`room` is referenced
/// twice, so it is computed once), and the claim's scan starts at that head
/// (`created_at >= o.head`: the same snapshot saw no queued run of the project older than it).
/// A claimed run's entry stays in the queue index until no snapshot anywhere on the server can
/// see its old version; while a long transaction holds one (a pg_dump, a report), every probe
/// of a head walks, one heap fetch each, every run of the project claimed since. The claim
/// made six such walks for a claim of all projects (three here, three in
/// `awooop_claim_projects`) and four for a bound one; now two each (migration 0085,
/// docs/benchmarks.md "Session 32"). With the range, a generic plan estimated few rows and
/// fetched them all with a bitmap scan and a sort: [`CLAIM_BEGIN`] turns bitmap scans off for
/// the claim's transaction, so the scan reads the index in order and stops at its limit.
///
/// FOR NO KEY UPDATE, the lock the claim's own UPDATE takes: it still excludes other
/// claimers and every writer of the row, but not the FOR KEY SHARE lock of a
/// transaction inserting a row that references the run (an outbound chat message, an
/// approval request); with FOR UPDATE, SKIP LOCKED passed over such a run and nothing
/// woke a worker for it again before the fallback poll.
///
/// Each project's running count (`busy`, counted by [`CLAIM_PROJECTS_SQL`]) is a probe of
/// runs_running_project (migration 0076) for that project alone: as a semi-join over all
/// projects the count read every tenant's running runs (from runs_leased, or the whole new
/// index).
pub const CLAIM_SQL: &str = "WITH room AS ( \
        SELECT qp.project_id, h.head, qp.busy, least($1, h.mc - qp.busy) AS n \
        FROM unnest($4::text[], $5::bigint[]) AS qp(project_id, busy) \
        CROSS JOIN LATERAL ( \
            SELECT r.created_at AS head, r.max_concurrent AS mc FROM runs r \
            WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying') \
            ORDER BY r.created_at LIMIT 1) h), \
     c AS ( \
        SELECT q.project_id, q.run_id, q.created_at \
        FROM (SELECT project_id, head, n FROM room WHERE n > 0 ORDER BY head, project_id) o \
        CROSS JOIN LATERAL ( \
            SELECT r.project_id, r.run_id, r.created_at FROM runs r \
            WHERE r.project_id = o.project_id AND r.state IN ('queued', 'retrying') \
              AND r.created_at >= o.head AND r.run_after <= now() \
            ORDER BY r.created_at LIMIT o.n \
            FOR NO KEY UPDATE SKIP LOCKED) q \
        LIMIT $1), \
     k AS ( \
        SELECT c.project_id, c.run_id, \
               row_number() OVER (PARTITION BY c.project_id ORDER BY c.created_at, c.run_id) AS rn \
        FROM c) \
     UPDATE runs r SET state = 'running', attempt = r.attempt + 1, worker_id = $2, \
        lease_expires_at = now() + make_interval(secs => least($3, r.lease_seconds)), heartbeat_at = now(), \
        started_at = coalesce(r.started_at, now()), updated_at = now() \
     FROM k JOIN room b ON b.project_id = k.project_id \
     WHERE r.project_id = k.project_id AND r.run_id = k.run_id \
       AND k.rn + b.busy <= r.max_concurrent \
     RETURNING r.project_id, r.run_id, r.agent, r.mode, r.input, r.agent_revision_id, r.trace_id, r.span_id, r.attempt, r.created_at, r.reply_to";

/// The claim's first statement: lock the projects to claim from and name them (migration
/// 0077, `awooop_claim_projects`).
///
/// A project's `max_concurrent` was counted from the claim's snapshot, and two claims of one
/// project running at the same time both saw the same committed count and each started up to
/// the whole room: with four workers and a cap of 64, up to 256 runs of one project were seen
/// running at once (docs/benchmarks.md, "Session 16"). This statement takes a transaction
/// advisory lock per project, in the order of the projects' oldest queued runs, with
/// `pg_try_advisory_xact_lock`: it never waits, and a project another claim holds is passed
/// over (that claim is starting its runs; the next claim here takes what is left). Once a
/// project is locked its running runs are counted by a new statement (a new snapshot, after
/// the lock); the projects with room are returned with their counts (`busy`) until their room
/// covers `$1`, and how many were passed over (`passed_over`).
///
/// It also returns how many projects it found with queued or retrying runs in its scope
/// (`queued`; migration 0084): none lets the worker wait for a notice instead of its fallback
/// poll.
pub const CLAIM_PROJECTS_SQL: &str =
    "SELECT locked, busy, passed_over, queued FROM awooop_claim_projects($1, $2)";

/// What one claim started, and whether it passed over projects another claim was claiming
/// from at that instant (their runs are that claim's to start; what it leaves, the next claim
/// here takes).
#[derive(Debug, Default)]
pub struct ClaimRound {
    pub runs: Vec<Claimed>,
    /// Projects with queued runs this claim passed over because another claim held their lock
    /// (their room was not counted: it may have been none).
    pub passed_over: u32,
    /// Projects in this claim's scope with queued or retrying runs, whether claimable now or
    /// not (a future `run_after`, a project at its cap): 0 means nothing is queued at all, so
    /// only a notice can bring work (a new run, a re-queue), and the worker may wait for one.
    pub queued: u32,
}

/// The claim of [`worker_claim_for`], in a transaction the caller holds in worker
/// scope: with `WorkerConfig::refill_on_complete` (off by default) the completion writer
/// claims the next runs in the transaction that completes the last ones. Two statements:
/// [`CLAIM_PROJECTS_SQL`] locks the projects, [`CLAIM_SQL`] starts their runs. The locks are
/// released when the caller's transaction ends: it must commit (or roll back) promptly.
pub async fn claim_in(
    conn: &mut PgConnection,
    worker: &str,
    n: i64,
    lease_seconds: f64,
    project: Option<&str>,
) -> Result<Vec<Claimed>> {
    Ok(claim_round_in(conn, worker, n, lease_seconds, project)
        .await?
        .runs)
}

/// [`claim_in`], also saying how many projects it passed over.
pub async fn claim_round_in(
    conn: &mut PgConnection,
    worker: &str,
    n: i64,
    lease_seconds: f64,
    project: Option<&str>,
) -> Result<ClaimRound> {
    let (projects, busy, passed_over, queued): (Vec<String>, Vec<i64>, i32, Option<i32>) =
        sqlx::query_as(CLAIM_PROJECTS_SQL)
            .bind(n)
            .bind(project)
            .fetch_one(&mut *conn)
            .await?;
    let passed_over = passed_over.max(0) as u32;
    // Unknown (nothing was asked for): count it as queued, so nobody waits on it.
    let queued = queued.map_or(1, |q| q.max(0) as u32);
    if projects.is_empty() {
        return Ok(ClaimRound {
            runs: Vec::new(),
            passed_over,
            queued,
        });
    }
    let runs = sqlx::query_as(CLAIM_SQL)
        .bind(n)
        .bind(worker)
        .bind(lease_seconds)
        .bind(&projects)
        .bind(&busy)
        .fetch_all(conn)
        .await?;
    Ok(ClaimRound {
        runs,
        passed_over,
        queued,
    })
}

/// The completion writer's refill of the project it has just completed runs of (with
/// `WorkerConfig::refill_on_complete`), in the completion's transaction, in worker scope: start
/// at most `freed` runs of `project`, where `freed` is how many runs of `project` this same
/// transaction has moved out of `running` (fenced completions: each was running at this
/// attempt). No project lock (migration 0077) is taken, so refills of one project do not queue
/// behind each other's commits or behind the claim loops', and the cap still holds:
///
/// * this transaction never raises the project's running count: it starts no more runs than
///   it ended, so at its commit the count is at most what it was;
/// * a locked claim counts the running runs after its lock, in its own snapshot: a refill not
///   yet committed shows there with its ended runs still running and its started runs absent,
///   so that count is at least the truth after the refill commits, and the claim starts no
///   more than the cap minus it;
/// * a lowered cap still drains: the refill also keeps to `max_concurrent` minus the running
///   runs its own snapshot sees (its ended runs no longer among them), so a project above its
///   cap gets fewer runs back than it ended.
///
/// It takes the project's runs only when the project's oldest queued run is the oldest of all
/// ([`REFILL_COUNT_SQL`]); otherwise it starts nothing and the caller's locked claim picks, in
/// its usual order. Two statements, as a locked claim: [`REFILL_COUNT_SQL`] and [`CLAIM_SQL`]
/// for this one project with `freed` as its limit.
///
/// `bound`: the worker claims only `project`'s runs (`awooop worker --project`, what the
/// operator's per-project Deployments run). Such a worker cannot start another tenant's runs
/// whatever their age (their own workers do), so its refill does not yield to them: yielding
/// would only send it to its locked claim for the same project's runs, one more lock and
/// statement per cycle.
pub async fn refill_in(
    conn: &mut PgConnection,
    worker: &str,
    project: &str,
    freed: i64,
    lease_seconds: f64,
    bound: bool,
) -> Result<Vec<Claimed>> {
    if freed <= 0 {
        return Ok(Vec::new());
    }
    let (busy, first): (i64, bool) = if bound {
        // No other tenant's head to compare with: the count alone.
        let busy = sqlx::query_scalar(REFILL_BUSY_SQL)
            .bind(project)
            .fetch_one(&mut *conn)
            .await?;
        (busy, true)
    } else {
        sqlx::query_as(REFILL_COUNT_SQL)
            .bind(project)
            .fetch_one(&mut *conn)
            .await?
    };
    if !first {
        // Another project's run has waited longer (or nothing of this project is queued): the
        // locked claim's order decides, as it would have without the refill.
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(CLAIM_SQL)
        .bind(freed)
        .bind(worker)
        .bind(lease_seconds)
        .bind(vec![project])
        .bind(vec![busy])
        .fetch_all(conn)
        .await?)
}

/// [`refill_in`]'s first statement: the project's running runs as the refill's transaction
/// sees them (a probe of `runs_running_project`, migration 0076, as `awooop_claim_projects`
/// counts), and whether the project's oldest queued run is the oldest of all (ties broken by
/// project id, as the claim orders): a refill takes its own project's runs only when the claim,
/// which visits projects in the order of their oldest queued run, would have started with it,
/// so a tenant with a deep backlog does not keep every slot its runs free while other tenants'
/// runs wait longer.
///
/// No index orders all queued runs by age (migration 0076 keeps one per project), and a sort of
/// the whole queue cost 4.7 ms with 18,555 queued runs (docs/benchmarks.md, "Session 20"). So
/// the probe walks the projects with queued runs as `awooop_claim_projects` does (a loose scan
/// of `runs_claimable_project`, one descent per project) and reads each other project's head
/// (one more descent): 2P + 2 index probes for P projects with queued runs, never more than the
/// locked claim it stands in for. The heads are scalar subqueries behind `OFFSET 0` on purpose:
/// written as `EXISTS (… o.created_at < mine …)` the planner turned the probe into a hash
/// semi-join over every queued run (38 ms with 20,000 queued over 8 projects, against 0.36 ms).
pub const REFILL_COUNT_SQL: &str = "WITH RECURSIVE qp AS ( \
        (SELECT r.project_id FROM runs r WHERE r.state IN ('queued', 'retrying') \
         ORDER BY r.project_id LIMIT 1) \
      UNION ALL \
        SELECT (SELECT r.project_id FROM runs r \
                WHERE r.state IN ('queued', 'retrying') AND r.project_id > qp.project_id \
                ORDER BY r.project_id LIMIT 1) \
        FROM qp WHERE qp.project_id IS NOT NULL), \
     mine AS ( \
        SELECT r.created_at FROM runs r \
        WHERE r.project_id = $1 AND r.state IN ('queued', 'retrying') \
        ORDER BY r.created_at LIMIT 1) \
     SELECT (SELECT count(*) FROM runs r WHERE r.project_id = $1 AND r.state = 'running'), \
            EXISTS (SELECT 1 FROM mine) AND NOT EXISTS ( \
                SELECT 1 FROM (SELECT qp.project_id, \
                                      (SELECT o.created_at FROM runs o \
                                       WHERE o.project_id = qp.project_id \
                                         AND o.state IN ('queued', 'retrying') \
                                       ORDER BY o.created_at LIMIT 1) AS head \
                               FROM qp WHERE qp.project_id IS NOT NULL AND qp.project_id <> $1 \
                               OFFSET 0) h, mine \
                WHERE h.head < mine.created_at \
                   OR (h.head = mine.created_at AND h.project_id < $1))";

/// A project-bound worker's [`refill_in`] count: the project's running runs, as the first
/// column of [`REFILL_COUNT_SQL`] (no fairness probe: see `bound`).
const REFILL_BUSY_SQL: &str =
    "SELECT count(*) FROM runs r WHERE r.project_id = $1 AND r.state = 'running'";

/// Turn a tenant transaction that has done its tenant work into a worker-scoped one (for
/// [`claim_in`] after [`complete_batch`]). Row-level security then also admits the worker
/// policy on `runs`; nothing tenant-scoped is written after this in the transaction.
pub async fn enter_worker_scope(conn: &mut PgConnection) -> Result<()> {
    // One simple-query message, as CLAIM_BEGIN: the scope, and the claim on its generic plan.
    sqlx::raw_sql(
        "SET LOCAL awooop.scope = 'worker'; SET LOCAL plan_cache_mode = force_generic_plan; \
         SET LOCAL enable_bitmapscan = off",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Extend the leases of the runs this worker holds (fenced by attempt). Returns how many
/// leases were extended.
pub async fn worker_heartbeat(
    pool: &PgPool,
    worker: &str,
    held: &[(Uuid, i32)],
    lease_seconds: f64,
) -> Result<u64> {
    if held.is_empty() {
        // Still prove the database answers: a worker that cannot reach it must stop claiming.
        sqlx::query("SELECT 1").execute(pool).await?;
        return Ok(0);
    }
    let mut tx = worker_tx(pool).await?;
    let n = heartbeat_in(&mut tx, worker, held, lease_seconds).await?;
    tx.commit().await?;
    Ok(n)
}

/// The heartbeat statement of [`worker_heartbeat`], in a worker-scoped transaction the caller
/// holds.
pub async fn heartbeat_in(
    conn: &mut PgConnection,
    worker: &str,
    held: &[(Uuid, i32)],
    lease_seconds: f64,
) -> Result<u64> {
    let ids: Vec<Uuid> = held.iter().map(|h| h.0).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.1).collect();
    let res = sqlx::query(
        // SKIP LOCKED: a row locked right now is being completed or cancelled, so it needs no
        // heartbeat; waiting for it could deadlock with this worker's own completion writer.
        // The expected state is bound per row (`h.expect`), not written as a literal, for the
        // reason given in complete_batch: with a literal the planner may scan every running
        // run (`runs_leased`) and compare it with every held run.
        "UPDATE runs r SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => least($4, r.lease_seconds)) \
         FROM (SELECT x.run_id FROM runs x JOIN unnest($2::uuid[], $3::int[], \
                 array_fill('running'::text, ARRAY[cardinality($2::uuid[])])) AS h(run_id, attempt, expect) \
               ON x.run_id = h.run_id AND x.attempt = h.attempt \
               WHERE x.state = h.expect AND x.worker_id = $1 FOR UPDATE OF x SKIP LOCKED) l \
         WHERE r.run_id = l.run_id",
    )
    .bind(worker)
    .bind(&ids)
    .bind(&attempts)
    .bind(lease_seconds)
    .execute(conn)
    .await?;
    Ok(res.rows_affected())
}

/// Reaper outcome counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub requeued: u64,
    pub failed: u64,
    pub timed_out: u64,
}

/// What the reaper has to do at this moment: whether any run's lease expired or hard deadline
/// passed ([`worker_reap`]), and whether any pending approval request expired
/// (`approvals::expire_due`). One statement of three index probes (`runs_leased`,
/// `runs_deadline`, `approval_requests_pending`, each read from its first entry), so that an
/// idle reaper tick costs one short transaction instead of two transactions, three UPDATEs
/// (each firing the run-event triggers even when it changes nothing) and a SELECT: the reaper
/// runs in every worker process every two seconds, busy or not (docs/benchmarks.md,
/// "Session 30"). What it finds due, the reaper then does as before; what falls due after it,
/// the next tick finds.
pub async fn reap_due(pool: &PgPool) -> Result<ReapDue> {
    let mut tx = worker_tx(pool).await?;
    let (runs, approvals): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE state = 'running' AND lease_expires_at < now()) \
             OR EXISTS (SELECT 1 FROM runs WHERE state IN ('queued', 'retrying', 'running', 'waiting_approval') \
                        AND deadline_at < now()), \
                EXISTS (SELECT 1 FROM approval_requests WHERE state = 'pending' AND expires_at < now())",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ReapDue { runs, approvals })
}

/// See [`reap_due`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapDue {
    /// A run's lease expired or its hard deadline passed.
    pub runs: bool,
    /// A pending approval request expired.
    pub approvals: bool,
}

/// Return runs whose lease expired to the queue (with exponential backoff), fail those out of
/// attempts with E-RUN-005, and time out runs past their hard deadline with E-RUN-006.
pub async fn worker_reap(pool: &PgPool) -> Result<Reaped> {
    let mut tx = worker_tx(pool).await?;
    let timed_out = sqlx::query(
        "UPDATE runs SET state = 'timed_out', error_code = 'E-RUN-006', error_message = 'run passed its hard deadline', \
         finished_at = now(), worker_id = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE state IN ('queued', 'retrying', 'running', 'waiting_approval') AND deadline_at < now()",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let failed = sqlx::query(
        "UPDATE runs SET state = 'failed', error_code = 'E-RUN-005', \
         error_message = 'lease lost on every attempt', finished_at = now(), worker_id = NULL, \
         lease_expires_at = NULL, updated_at = now() \
         WHERE state = 'running' AND lease_expires_at < now() AND attempt >= max_attempts",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let requeued = sqlx::query(
        "UPDATE runs SET state = 'retrying', worker_id = NULL, lease_expires_at = NULL, \
         run_after = now() + make_interval(secs => least(30, 0.25 * power(2, attempt - 1))), updated_at = now() \
         WHERE state = 'running' AND lease_expires_at < now() AND attempt < max_attempts",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Reaped {
        requeued,
        failed,
        timed_out,
    })
}

/// Give runs back to the queue at shutdown (fenced by attempt; the attempt still counts).
pub async fn worker_release(pool: &PgPool, worker: &str, held: &[(Uuid, i32)]) -> Result<u64> {
    if held.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = held.iter().map(|h| h.0).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.1).collect();
    let mut tx = worker_tx(pool).await?;
    let res = sqlx::query(
        // `h.expect` instead of a literal state, as in complete_batch: each held run is probed
        // by id, never every running run of the table (`runs_leased`) against every held one.
        "UPDATE runs r SET state = 'retrying', worker_id = NULL, lease_expires_at = NULL, run_after = now(), updated_at = now() \
         FROM unnest($2::uuid[], $3::int[], array_fill('running'::text, ARRAY[cardinality($2::uuid[])])) AS h(run_id, attempt, expect) \
         WHERE r.run_id = h.run_id AND r.attempt = h.attempt AND r.state = h.expect AND r.worker_id = $1",
    )
    .bind(worker)
    .bind(&ids)
    .bind(&attempts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(res.rows_affected())
}

/// Completed steps of a run (index → output), for resuming.
pub async fn completed_steps(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<(i32, Value)>> {
    Ok(sqlx::query_as(
        "SELECT step_index, coalesce(output, 'null'::jsonb) FROM run_steps WHERE run_id = $1 AND status = 'succeeded' ORDER BY step_index",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?)
}

pub struct StepRecord<'a> {
    pub project: &'a str,
    pub run_id: Uuid,
    pub attempt: i32,
    pub step_index: i32,
    pub step_key: &'a str,
    pub step_type: &'a str,
    pub input_hash: &'a str,
    pub status: &'a str,
    pub output: Option<&'a Value>,
    pub error_code: Option<&'a str>,
    pub trace: &'a TraceContext,
    pub started_at: DateTime<Utc>,
}

/// Journal a step attempt, fenced: only while this attempt still holds the run. Returns false
/// when the attempt lost the run (the step result is discarded).
pub async fn journal_step(conn: &mut PgConnection, s: &StepRecord<'_>) -> Result<bool> {
    let res = sqlx::query(
        // `(SELECT 'running'::text)`, not a literal, for the reason given in complete_batch:
        // with the literal the planner could answer the EXISTS from `runs_leased` (every
        // running run) instead of the run's own id.
        "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, output, error_code, trace_id, span_id, started_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 \
         WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = $2 AND attempt = $4 AND state = (SELECT 'running'::text)) \
         ON CONFLICT DO NOTHING",
    )
    .bind(s.project)
    .bind(s.run_id)
    .bind(s.step_index)
    .bind(s.attempt)
    .bind(s.step_key)
    .bind(s.step_type)
    .bind(s.input_hash)
    .bind(s.status)
    .bind(s.output)
    .bind(s.error_code)
    .bind(&s.trace.trace_id)
    .bind(&s.trace.span_id)
    .bind(s.started_at)
    .execute(conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Retention: delete finished runs older than `days` and expired idempotency keys of the
/// current project.
pub async fn retention(conn: &mut PgConnection, days: i64) -> Result<(u64, u64)> {
    let runs = sqlx::query(
        "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(days => $1::int) \
         AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out')",
    )
    .bind(days)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok((runs, keys))
}

/// The result of one attempt, written by [`complete_batch`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub run_id: Uuid,
    pub attempt: i32,
    pub state: RunState,
    pub output: Option<Value>,
    pub error: Option<(String, String)>,
    pub steps: Vec<PendingStep>,
    /// Where the reply goes, with the run output that passed the agent's output schema.
    pub reply: Option<(super::outbound::ReplyTo, crate::validate::ValidatedOutput)>,
    /// The approval request of a run that moves to `waiting_approval` on a tool call.
    pub approval: Option<PendingApproval>,
    pub trace_id: String,
}

/// An approval request written with its run's completion.
#[derive(Debug, Clone)]
pub struct PendingApproval {
    pub need: crate::approvals::NeedsApproval,
    pub policy: crate::approvals::ApprovalPolicy,
    pub agent: String,
    pub reply_to: Option<super::outbound::ReplyTo>,
}

/// The fence of [`complete_batch`] taken as row locks (run, attempt, state running) before
/// its journal rows are written (migration 0074); `h.expect` for the reason given at
/// [`COMPLETE_SQL`].
pub const FENCE_LOCK_SQL: &str = "SELECT r.run_id FROM runs r \
             JOIN unnest($1::uuid[], $2::int[], array_fill('running'::text, ARRAY[cardinality($1::uuid[])])) \
               AS h(run_id, attempt, expect) \
               ON r.run_id = h.run_id AND r.attempt = h.attempt AND r.state = h.expect \
             WHERE r.project_id = $3 \
             FOR NO KEY UPDATE OF r";

/// The fenced state change of [`complete_batch`]: only attempts that still hold their run land.
///
/// The fence's expected state comes out of the unnest (`h.expect`, 'running' for every
/// row) instead of a literal: a literal `r.state = 'running'` lets the planner drive the
/// update from the partial index `runs_leased` (every running run of every project) and
/// probe the batch once per running run, which it does whenever its statistics say few
/// runs are running (a queue analysed while idle): O(running x batch) comparisons,
/// ~0.7 ms of PostgreSQL CPU per completed run with 1,024 running (docs/benchmarks.md,
/// "drain (session 7)"). With `h.expect` no partial index can match, and the plan probes
/// each completion by run id. Same rows, same fence (run, attempt, state = running).
/// `event_seq` catches up with the journal events written before it (the state-change
/// trigger numbers its events after it; migration 0074).
///
/// The same statement writes the `run.finish` audit row of every run it lands (`a`: the
/// rows come redacted from [`awooop_store::audit::Columns`], one per completion, and only
/// those of the attempts that land are inserted) and turns the journal's deferred numbering
/// off again (`z`, set by [`STEPS_SQL`]: a journal row written later in the transaction moves
/// the counter itself). Both were statements of their own: with the `SET LOCAL` before the
/// journal, three round trips of every completion batch, and on the 2-core machine a round
/// trip under load is 0.2-0.4 ms of a cycle the capped drain waits for (docs/benchmarks.md,
/// "Session 33"). `z` is the second branch of a UNION ALL, which is always evaluated,
/// whatever lands; `set_config` never returns NULL, so it adds no row.
pub const COMPLETE_SQL: &str = "WITH done AS (UPDATE runs r SET state = h.state, output = NULLIF(h.output, 'null'::jsonb), error_code = h.code, \
         error_message = h.msg, \
         finished_at = CASE WHEN h.state IN ('succeeded','failed','cancelled','timed_out') THEN now() ELSE r.finished_at END, \
         worker_id = NULL, lease_expires_at = NULL, updated_at = now(), \
         event_seq = greatest(r.event_seq, (SELECT coalesce(max(e.seq), 0) FROM run_events e \
           WHERE e.project_id = r.project_id AND e.run_id = r.run_id)) \
         FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::text[], $6::text[], \
           array_fill('running'::text, ARRAY[cardinality($1::uuid[])])) AS h(run_id, attempt, state, output, code, msg, expect) \
         WHERE r.project_id = $7 AND r.run_id = h.run_id AND r.attempt = h.attempt AND r.state = h.expect \
         RETURNING r.run_id, r.attempt), \
     a AS (INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details) \
         SELECT $7, x.id, x.actor, x.action, x.target, x.outcome, x.code, x.trace, x.details \
         FROM unnest($1::uuid[], $2::int[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
           $14::text[], $15::jsonb[]) AS x(run_id, attempt, id, actor, action, target, outcome, code, trace, details) \
         WHERE (x.run_id, x.attempt) IN (SELECT run_id, attempt FROM done)) \
     SELECT run_id FROM done \
     UNION ALL SELECT NULL::uuid FROM (SELECT set_config('awooop.step_seq', '', true) AS off) z WHERE z.off IS NULL";

/// The journal rows of a completion batch, in one statement, numbered in the deferred mode of
/// migration 0074 (`awooop.step_seq = 'deferred'`, set by the statement itself before its
/// AFTER trigger fires, and turned off again by [`COMPLETE_SQL`]). Duplicates of rows already
/// journalled are skipped: a retried batch writes nothing twice.
pub const STEPS_SQL: &str = "INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, output, error_code, trace_id, span_id, started_at) \
     SELECT $1, u.* FROM unnest($2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::timestamptz[]) \
       AS u(run_id, step_index, attempt, step_key, step_type, input_hash, status, output, error_code, trace_id, span_id, started_at) \
     CROSS JOIN (SELECT set_config('awooop.step_seq', 'deferred', true) AS deferred OFFSET 0) d \
     ON CONFLICT DO NOTHING";

/// Write many completions of the current project in one transaction: the fenced state update
/// (only attempts that still hold their run land), then the journal rows, replies and audit
/// rows of the landed ones. Returns, per completion, whether it landed.
pub async fn complete_batch(
    conn: &mut PgConnection,
    project: &str,
    items: &[Completion],
) -> Result<Vec<bool>> {
    let ids: Vec<Uuid> = items.iter().map(|c| c.run_id).collect();
    let attempts: Vec<i32> = items.iter().map(|c| c.attempt).collect();
    let states: Vec<&str> = items.iter().map(|c| c.state.as_str()).collect();
    let outputs: Vec<Value> = items
        .iter()
        .map(|c| c.output.clone().unwrap_or(Value::Null))
        .collect();
    let codes: Vec<Option<&str>> = items
        .iter()
        .map(|c| c.error.as_ref().map(|e| e.0.as_str()))
        .collect();
    let msgs: Vec<Option<&str>> = items
        .iter()
        .map(|c| c.error.as_ref().map(|e| e.1.as_str()))
        .collect();
    // The fence (run, attempt, state running) is taken as row locks first, so the journal rows
    // of exactly the runs that will land can be written before their state change: the step
    // trigger then numbers their events under the lock without updating the run (a row version
    // with seven index entries per run, a third of what a drained run left behind;
    // migration 0074), and the state change below catches `event_seq` up. A batch without
    // journal rows needs no lock first: its UPDATE is the fence.
    let any_steps = items.iter().any(|c| !c.steps.is_empty());
    let fenced: Option<std::collections::HashSet<Uuid>> = if any_steps {
        let locked: Vec<Uuid> = sqlx::query_scalar(FENCE_LOCK_SQL)
            .bind(&ids)
            .bind(&attempts)
            .bind(project)
            .fetch_all(&mut *conn)
            .await?;
        let locked: std::collections::HashSet<Uuid> = locked.into_iter().collect();
        let steps: Vec<(&Completion, &PendingStep)> = items
            .iter()
            .filter(|c| locked.contains(&c.run_id))
            .flat_map(|c| c.steps.iter().map(move |s| (c, s)))
            .collect();
        if !steps.is_empty() {
            // Deferred numbering on (the statement sets it) until COMPLETE_SQL turns it off.
            insert_steps(conn, project, &steps).await?;
        }
        Some(locked)
    } else {
        None
    };
    // One `run.finish` audit row per completion, redacted here; the statement inserts those of
    // the attempts that land (their details carry no user content: state, attempt, code).
    let audit = awooop_store::audit::Columns::of(
        items
            .iter()
            .map(|c| awooop_store::audit::Entry {
                trace_id: Some(c.trace_id.clone()),
                ..awooop_store::audit::Entry::ok(
                    "worker",
                    "run.finish",
                    c.run_id.to_string(),
                    serde_json::json!({"state": c.state.as_str(), "attempt": c.attempt, "error_code": c.error.as_ref().map(|e| e.0.as_str())}),
                )
            })
            .collect(),
    );
    let landed: Vec<Uuid> = sqlx::query_scalar(COMPLETE_SQL)
        .bind(&ids)
        .bind(&attempts)
        .bind(&states)
        .bind(&outputs)
        .bind(&codes)
        .bind(&msgs)
        .bind(project)
        .bind(&audit.ids)
        .bind(&audit.actors)
        .bind(&audit.actions)
        .bind(&audit.targets)
        .bind(&audit.outcomes)
        .bind(&audit.codes)
        .bind(&audit.traces)
        .bind(&audit.details)
        .fetch_all(&mut *conn)
        .await?;
    let landed: std::collections::HashSet<Uuid> = landed.into_iter().collect();
    if let Some(locked) = &fenced {
        // The runs were locked by this transaction: nothing can have moved them in between.
        if *locked != landed {
            return Err(Error::new(
                ErrorCode::Internal,
                "the fenced completion landed other runs than it locked",
            ));
        }
    }
    let ok: Vec<&Completion> = items
        .iter()
        .filter(|c| landed.contains(&c.run_id))
        .collect();
    if !ok.is_empty() {
        for c in ok.iter().filter(|c| c.state == RunState::WaitingApproval) {
            if let Some(a) = &c.approval {
                crate::approvals::insert_request(
                    conn,
                    project,
                    c.run_id,
                    &a.agent,
                    &c.trace_id,
                    a.reply_to.as_ref(),
                    &a.need,
                    &a.policy,
                )
                .await?;
            }
        }
        for c in ok.iter().filter(|c| c.state == RunState::Succeeded) {
            if let Some((r, out)) = &c.reply {
                super::outbound::deliver_reply(conn, project, c.run_id, r, out, &c.trace_id)
                    .await?;
            }
        }
    }
    Ok(items.iter().map(|c| landed.contains(&c.run_id)).collect())
}

/// The journal rows of a completion batch ([`STEPS_SQL`]).
async fn insert_steps(
    conn: &mut PgConnection,
    project: &str,
    steps: &[(&Completion, &PendingStep)],
) -> Result<()> {
    /// One column of the journal rows.
    fn col<'a, T>(
        steps: &[(&'a Completion, &'a PendingStep)],
        f: impl Fn(&'a Completion, &'a PendingStep) -> T,
    ) -> Vec<T> {
        steps.iter().map(|&(c, s)| f(c, s)).collect()
    }
    sqlx::query(STEPS_SQL)
        .bind(project)
        .bind(col(steps, |c, _| c.run_id))
        .bind(col(steps, |_, s| s.index))
        .bind(col(steps, |c, _| c.attempt))
        .bind(col(steps, |_, s| s.key.as_str()))
        .bind(col(steps, |_, s| s.step_type.as_str()))
        .bind(col(steps, |_, s| s.input_hash.as_str()))
        .bind(col(steps, |_, s| s.status.as_str()))
        .bind(col(steps, |_, s| s.output.clone().unwrap_or(Value::Null)))
        .bind(col(steps, |_, s| s.error_code.as_deref()))
        .bind(col(steps, |_, s| s.trace.trace_id.as_str()))
        .bind(col(steps, |_, s| s.trace.span_id.as_str()))
        .bind(col(steps, |_, s| s.started_at))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CLAIM_PROJECTS_SQL, CLAIM_SQL, COMPLETE_SQL, FENCE_LOCK_SQL, STEPS_SQL};

    /// The text without any whitespace: the script spreads the statements over lines
    /// differently, and only the tokens matter.
    fn squeeze(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn between<'a>(s: &'a str, from: &str, to: &str) -> &'a str {
        let start = s
            .find(from)
            .unwrap_or_else(|| panic!("profile-drain-db.sh has no `{from}`"))
            + from.len();
        let len = s[start..]
            .find(to)
            .unwrap_or_else(|| panic!("no `{to}` after `{from}`"));
        &s[start..start + len]
    }

    /// `scripts/profile-drain-db.sh` profiles the worker's claim and completion by replaying
    /// them from psql. It replayed statements the worker had stopped running two migrations
    /// earlier, and its figures misled (docs/benchmarks.md, "Session 15"): now a change of
    /// either statement fails here until the script replays it too.
    #[test]
    fn the_drain_profile_replays_the_statements_the_worker_runs() {
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/profile-drain-db.sh"
        ))
        .expect("scripts/profile-drain-db.sh");
        // The script wraps the claim in a CTE (`u`) only to hand its rows to psql variables.
        let claim = squeeze(between(
            &script,
            "PREPARE claim(bigint, text, float8, text[], bigint[]) AS\n",
            "\nSELECT count(*) AS got",
        ))
        .replacen("),uAS(UPDATE", ")UPDATE", 1);
        assert_eq!(claim.strip_suffix(')'), Some(squeeze(CLAIM_SQL).as_str()));
        let projects = between(&script, "PREPARE projects(bigint, text) AS\n", ";\n");
        assert_eq!(squeeze(projects), squeeze(CLAIM_PROJECTS_SQL));
        let lock = between(&script, "PREPARE lock(uuid[], int[], text) AS\n", ";\n");
        assert_eq!(squeeze(lock), squeeze(FENCE_LOCK_SQL));
        let done = between(
            &script,
            "PREPARE done(uuid[], int[], text[], jsonb[], text[], text[], text, uuid[], text[], text[], text[], text[], text[], text[], jsonb[]) AS\n",
            ";\n",
        );
        assert_eq!(squeeze(done), squeeze(COMPLETE_SQL));
        let journal = between(
            &script,
            "PREPARE journal(text, uuid[], int[], int[], text[], text[], text[], text[], jsonb[], text[], text[], text[], timestamptz[]) AS\n",
            ";\n",
        );
        assert_eq!(squeeze(journal), squeeze(STEPS_SQL));
    }
}
