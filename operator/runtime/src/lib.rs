//! The durable run runtime: runs with an 8-state machine, a step journal, idempotency keys,
//! workers that claim with `FOR NO KEY UPDATE SKIP LOCKED`, heartbeat and are reaped when they die.
//!
//! [`RunService`] is what the HTTP API calls (create, get, list, cancel, resume after approval);
//! [`worker::Worker`] executes runs through the [`executor::Executor`] interface.

pub mod approvals;
mod create_batch;
pub mod events;
pub mod executor;
pub mod metrics;
pub mod outbound;
pub mod repo;
pub mod validate;
pub mod worker;

pub use awooop_core::{run_state as state, trace};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use awooop_contracts::{self as contracts, Contract, ContractKind, RuntimeContract};
use awooop_control::{ControlPlane, MigrationMode};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::audit::{self, Entry};
use awooop_store::auth::{Actor, Role};
use awooop_store::tenancy;
pub use state::RunState;
pub use trace::TraceContext;

/// Runtime settings used when a project has no active Runtime contract named `default`.
pub fn default_runtime() -> RuntimeContract {
    RuntimeContract {
        max_attempts: 3,
        lease_seconds: 20,
        heartbeat_seconds: 5,
        run_deadline_seconds: 900,
        idempotency_ttl_seconds: 86_400,
        retention_days: 30,
        max_concurrent_runs: 64,
        max_input_bytes: 262_144,
    }
}

// The wire types live in `awooop-api`, shared with `awooop-client`.
pub use awooop_api::{CreateRun, RunAccepted, RunDetail, RunPage, RunView, StepView};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    /// Opaque cursor from the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A run request that passed every check of [`RunService::prepare`], not yet written.
#[derive(Debug, Clone)]
pub struct PreparedRun {
    /// The id the run gets when it is inserted (not when an idempotency key replays another).
    run_id: Uuid,
    project: tenancy::ProjectId,
    principal: String,
    req: CreateRun,
    idempotency_key: Option<String>,
    trace: TraceContext,
    settings: RuntimeContract,
    mode: MigrationMode,
    agent_revision_id: Uuid,
    agent_body_hash: String,
    project_revision_id: Option<Uuid>,
    project_body_hash: Option<String>,
    input_hash: String,
    request_hash: String,
}

impl PreparedRun {
    /// The run's migration mode (the project's unless the request asked for less).
    pub fn mode(&self) -> MigrationMode {
        self.mode
    }

    /// The id the run gets if this request inserts it (callers that link rows to the run in
    /// the same transaction use it; a replayed idempotency key returns another run's id).
    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    fn new_run(&self, run_id: Uuid) -> repo::NewRun<'_> {
        repo::NewRun {
            project: self.project.as_str(),
            run_id,
            agent: &self.req.agent,
            mode: self.mode.as_str(),
            input: &self.req.input,
            input_hash: &self.input_hash,
            agent_revision_id: self.agent_revision_id,
            agent_body_hash: &self.agent_body_hash,
            project_revision_id: self.project_revision_id,
            project_body_hash: self.project_body_hash.as_deref(),
            trace: &self.trace,
            idempotency_key: self.idempotency_key.as_deref(),
            reply_to: self.req.reply_to.as_ref(),
            max_attempts: i32::from(self.settings.max_attempts),
            lease_seconds: self.settings.lease_seconds as i32,
            max_concurrent: self.settings.max_concurrent_runs as i32,
            deadline_seconds: self.settings.run_deadline_seconds as i64,
        }
    }

    fn audit_entry(&self, run_id: Uuid) -> Entry<'_> {
        Entry {
            trace_id: Some(self.trace.trace_id.clone()),
            ..Entry::ok(
                &self.principal,
                "run.create",
                run_id.to_string(),
                json!({"agent": self.req.agent, "mode": self.mode.as_str(), "input_hash": self.input_hash}),
            )
        }
    }

    fn accepted(&self, run_id: Uuid) -> RunAccepted {
        RunAccepted {
            run_id,
            trace_id: self.trace.trace_id.clone(),
            traceparent: self.trace.traceparent(),
            state: RunState::Queued.as_str().into(),
            mode: self.mode.as_str().into(),
            replayed: false,
        }
    }
}

/// What runs of one agent are prepared against (see [`RunService::basis`]): kept by callers
/// that start many runs, and checked in their write transaction so a stale basis (a mode
/// change, an activation) is never written.
#[derive(Debug, Clone)]
pub struct RunBasis {
    project: tenancy::ProjectId,
    agent: String,
    settings: RuntimeContract,
    runtime_revision_id: Option<Uuid>,
    project_mode: MigrationMode,
    agent_revision_id: Uuid,
    agent_body_hash: String,
    project_revision_id: Option<Uuid>,
    project_body_hash: Option<String>,
}

impl RunBasis {
    /// The project's migration mode when the basis was read.
    pub fn mode(&self) -> MigrationMode {
        self.project_mode
    }

    /// The check of [`RunBasis::still_current`] as a boolean SQL expression, for a caller that
    /// guards its own statement with it (the channel hub's event insert: no round trip of its
    /// own). Its parameters are `$first` … `$first+5`: [`RunBasis::check_params`].
    pub fn check_sql(first: usize) -> String {
        let p = |i: usize| format!("${}", first + i);
        format!(
            "(coalesce((SELECT mode FROM project_migration_state), 'shadow') = {}::text \
             AND (SELECT revision_id FROM active_revisions WHERE kind = 'runtime' AND name = 'default') IS NOT DISTINCT FROM {}::uuid \
             AND (SELECT revision_id FROM active_revisions WHERE kind = 'agent' AND name = {}::text) IS NOT DISTINCT FROM {}::uuid \
             AND (SELECT revision_id FROM active_revisions WHERE kind = 'project' AND name = {}::text) IS NOT DISTINCT FROM {}::uuid)",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5)
        )
    }

    /// The parameters of [`RunBasis::check_sql`], in order.
    #[allow(clippy::type_complexity)]
    pub fn check_params(&self) -> (&'static str, Option<Uuid>, &str, Uuid, &str, Option<Uuid>) {
        (
            self.project_mode.as_str(),
            self.runtime_revision_id,
            self.agent.as_str(),
            self.agent_revision_id,
            self.project.as_str(),
            self.project_revision_id,
        )
    }

    /// Whether the mode and the active revisions are still those of this basis, read in the
    /// caller's (tenant) transaction: one round trip.
    pub async fn still_current(&self, tx: &mut sqlx::PgConnection) -> Result<bool> {
        let (mode, runtime, agent, project): (Option<String>, Option<Uuid>, Option<Uuid>, Option<Uuid>) =
            sqlx::query_as(
                "SELECT (SELECT mode FROM project_migration_state), \
                   (SELECT revision_id FROM active_revisions WHERE kind = 'runtime' AND name = 'default'), \
                   (SELECT revision_id FROM active_revisions WHERE kind = 'agent' AND name = $1), \
                   (SELECT revision_id FROM active_revisions WHERE kind = 'project' AND name = $2)",
            )
            .bind(&self.agent)
            .bind(self.project.as_str())
            .fetch_one(tx)
            .await?;
        let mode = mode.map(|m| MigrationMode::parse(&m)).transpose()?;
        Ok(mode.unwrap_or(MigrationMode::Shadow) == self.project_mode
            && runtime == self.runtime_revision_id
            && agent == Some(self.agent_revision_id)
            && project == self.project_revision_id)
    }
}

#[derive(Clone)]
pub struct RunService {
    control: ControlPlane,
}

impl RunService {
    pub fn new(control: ControlPlane) -> Self {
        Self { control }
    }

    /// The runtime settings of the current project.
    pub async fn runtime_settings(&self) -> Result<RuntimeContract> {
        match self
            .control
            .active_typed(ContractKind::Runtime, "default")
            .await
        {
            Ok((_, Contract::Runtime(r))) => Ok(r),
            Ok(_) => Ok(default_runtime()),
            Err(e) if e.code == ErrorCode::ContractNotFound => Ok(default_runtime()),
            Err(e) => Err(e),
        }
    }

    /// Accept a run: resolve the active Agent (and Project) revisions, apply the idempotency
    /// key, insert in `queued`. Nothing is written when any check fails.
    pub async fn create(
        &self,
        actor: &Actor,
        req: CreateRun,
        idempotency_key: Option<&str>,
        traceparent: Option<&str>,
    ) -> Result<RunAccepted> {
        let trace = match traceparent {
            Some(h) => TraceContext::from_traceparent(h)?,
            None => TraceContext::generate(),
        };
        let db = self.control.db();
        // Without an idempotency key there is nothing to replay: the run goes to the group
        // commit, which writes the runs, events and audit rows that concurrent creations of
        // the project queued meanwhile in one statement and one transaction, and announces
        // them after its commit; it is prepared on the cached run basis, which the writing
        // transaction checks (create_batch).
        if idempotency_key.is_none() {
            actor.require(Role::Runner)?;
            let writer = db.shared::<create_batch::CreateWriter>();
            let basis = writer.basis(self, &req.agent).await?;
            // A refusal is only ever decided on a basis read afresh: the cached one may predate
            // the mode change or the activation the request relies on (a higher mode just
            // allowed, a larger input limit), and an acceptance is checked by the writing
            // statement anyway.
            if let Ok(prepared) = self.prepare_on(&basis, actor, req.clone(), None, trace.clone()) {
                match writer.create(db, prepared, Some(basis)).await {
                    Ok(a) => return Ok(a),
                    Err(create_batch::Refusal::Failed(e)) => return Err(e),
                    Err(create_batch::Refusal::Stale) => {}
                }
            }
            // Refused on the cached basis, or the mode or an active revision changed since it
            // was cached: read it afresh and write without a check, as a creation always was.
            writer.forget(&tenancy::require()?, &req.agent);
            let prepared = self.prepare(actor, req, None, trace).await?;
            return match writer.create(db, prepared, None).await {
                Ok(a) => Ok(a),
                Err(create_batch::Refusal::Failed(e)) => Err(e),
                Err(create_batch::Refusal::Stale) => Err(Error::new(
                    ErrorCode::Internal,
                    "a run without a basis check was refused as stale",
                )),
            };
        }
        let prepared = self.prepare(actor, req, idempotency_key, trace).await?;
        // With a key, the one-by-one path serialises on the key, then replays, refuses or
        // inserts. The run's wake-ups are sent after the COMMIT (awooop_store::notify), so
        // concurrent creations are not serialised on PostgreSQL's NOTIFY lock.
        let mut tx = db.tenant_deferred().await?;
        let accepted = Self::insert_prepared(&mut tx, &prepared).await?;
        tx.commit().await?;
        if !accepted.replayed {
            db.notifier()
                .runs_created(prepared.project.as_str(), [accepted.run_id]);
        }
        Ok(accepted)
    }

    /// Every check of [`Self::create`] (role, key shape, input size, mode, active revisions),
    /// with no write. The result is inserted by [`Self::insert_prepared`] inside the caller's
    /// tenant transaction, so a caller (the channel hub) can store its own rows and the run
    /// atomically.
    pub async fn prepare(
        &self,
        actor: &Actor,
        req: CreateRun,
        idempotency_key: Option<&str>,
        trace: TraceContext,
    ) -> Result<PreparedRun> {
        actor.require(Role::Runner)?;
        let basis = self.basis(&req.agent).await?;
        self.prepare_on(&basis, actor, req, idempotency_key, trace)
    }

    /// What a run of `agent` in the current project is prepared against: the runtime settings,
    /// the project's migration mode and the active Agent (and Project) revisions. Callers that
    /// start many runs (the channel hub) keep it and check it with [`RunBasis::still_current`]
    /// inside their write transaction.
    pub async fn basis(&self, agent: &str) -> Result<RunBasis> {
        let project = tenancy::require()?;
        // One tenant transaction and one statement for the mode and the three active
        // revisions (three round trips; they were four transactions of three each), and one
        // snapshot for all of them. The project contract is only pointed to, not read.
        let (project_mode, found) = self
            .control
            .mode_and_active(&[
                (ContractKind::Runtime, "default", true),
                (ContractKind::Agent, agent, true),
                (ContractKind::Project, project.as_str(), false),
            ])
            .await?;
        let mut found = found.into_iter();
        let (runtime, agent_active, project_active) = (
            found.next().flatten(),
            found.next().flatten(),
            found.next().flatten(),
        );
        // Published bodies were validated at publish; a failure here means a schema change
        // made an old revision unreadable, which must not be silently accepted (as
        // `ControlPlane::active_typed`).
        let validate = |kind: ContractKind, body: Option<Value>| {
            let body = body.ok_or_else(|| {
                Error::new(
                    ErrorCode::Internal,
                    "an active contract was read without its body",
                )
            })?;
            contracts::validate(kind, &body).map_err(contracts::violations_error)
        };
        let (runtime_revision_id, settings) = match runtime {
            Some((ptr, body)) => match validate(ContractKind::Runtime, body)? {
                Contract::Runtime(r) => (Some(ptr.revision_id), r),
                _ => (Some(ptr.revision_id), default_runtime()),
            },
            None => (None, default_runtime()),
        };
        let Some((agent_ptr, agent_body)) = agent_active else {
            return Err(Error::new(
                ErrorCode::RunAgentInactive,
                "unknown agent or no active revision",
            ));
        };
        validate(ContractKind::Agent, agent_body)?;
        let project_ptr = project_active.map(|(ptr, _)| ptr);
        Ok(RunBasis {
            project,
            agent: agent.to_string(),
            settings,
            runtime_revision_id,
            project_mode,
            agent_revision_id: agent_ptr.revision_id,
            agent_body_hash: agent_ptr.body_hash,
            project_revision_id: project_ptr.as_ref().map(|p| p.revision_id),
            project_body_hash: project_ptr.map(|p| p.body_hash),
        })
    }

    /// [`RunService::prepare`] against a basis read earlier (no I/O).
    pub fn prepare_on(
        &self,
        basis: &RunBasis,
        actor: &Actor,
        req: CreateRun,
        idempotency_key: Option<&str>,
        trace: TraceContext,
    ) -> Result<PreparedRun> {
        actor.require(Role::Runner)?;
        let project = tenancy::require()?;
        if project != basis.project || req.agent != basis.agent {
            return Err(Error::new(
                ErrorCode::Internal,
                "a run basis is only valid for its own project and agent",
            ));
        }
        if let Some(k) = idempotency_key
            && !valid_idempotency_key(k)
        {
            return Err(Error::new(
                ErrorCode::RunIdempotencyKeyInvalid,
                "Idempotency-Key must match [A-Za-z0-9._:-]{1,128}",
            ));
        }
        let settings = basis.settings.clone();
        let input_bytes = serde_json::to_vec(&req.input).map(|v| v.len()).unwrap_or(0);
        if input_bytes > settings.max_input_bytes as usize {
            return Err(Error::new(
                ErrorCode::RunInputTooLarge,
                format!(
                    "input is {input_bytes} bytes; the limit is {}",
                    settings.max_input_bytes
                ),
            ));
        }
        let project_mode = basis.project_mode;
        let mode = match &req.mode {
            None => project_mode,
            Some(m) => {
                let m = MigrationMode::parse(m)?;
                if m > project_mode {
                    return Err(Error::new(
                        ErrorCode::RunModeNotAllowed,
                        format!(
                            "project is in {} mode; a {} run is not allowed",
                            project_mode.as_str(),
                            m.as_str()
                        ),
                    ));
                }
                m
            }
        };
        let input_hash = contracts::canonical::body_hash(&req.input);
        let request_hash = contracts::canonical::body_hash(&json!({
            "agent": req.agent, "input": req.input, "mode": mode.as_str(), "reply_to": req.reply_to
        }));
        Ok(PreparedRun {
            run_id: Uuid::now_v7(),
            project,
            principal: actor.principal.clone(),
            req,
            idempotency_key: idempotency_key.map(str::to_string),
            trace,
            settings,
            mode,
            agent_revision_id: basis.agent_revision_id,
            agent_body_hash: basis.agent_body_hash.clone(),
            project_revision_id: basis.project_revision_id,
            project_body_hash: basis.project_body_hash.clone(),
            input_hash,
            request_hash,
        })
    }

    /// Insert many prepared runs of the current project in the caller's tenant transaction
    /// with one statement per table (the channel hub's group commit). Returns `None`, having
    /// written nothing, when one of their idempotency keys is already taken: the caller then
    /// inserts them one by one with [`RunService::insert_prepared`], which replays or refuses.
    pub async fn insert_prepared_many(
        tx: &mut sqlx::PgConnection,
        runs: &[&PreparedRun],
    ) -> Result<Option<Vec<RunAccepted>>> {
        Self::insert_prepared_many_guarded(tx, runs, None).await
    }

    /// [`Self::insert_prepared_many`], also writing nothing (`None`) when `guard` (the basis
    /// the runs were prepared on) is no longer current: checked by the same statement.
    pub async fn insert_prepared_many_guarded(
        tx: &mut sqlx::PgConnection,
        runs: &[&PreparedRun],
        guard: Option<&RunBasis>,
    ) -> Result<Option<Vec<RunAccepted>>> {
        let project = tenancy::require()?;
        if runs.iter().any(|p| p.project != project) {
            return Err(Error::new(
                ErrorCode::TenantMissing,
                "a prepared run can only be inserted in its own project's scope",
            ));
        }
        if runs.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut keys: Vec<&str> = runs
            .iter()
            .filter_map(|p| p.idempotency_key.as_deref())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let with_key = runs.iter().filter(|p| p.idempotency_key.is_some()).count();
        if keys.len() != with_key {
            return Ok(None);
        }
        let ids: Vec<Uuid> = runs.iter().map(|p| p.run_id).collect();
        let keyed: Vec<(&str, &str, Uuid, i64)> = runs
            .iter()
            .zip(&ids)
            .filter_map(|(p, id)| {
                p.idempotency_key.as_deref().map(|k| {
                    (
                        k,
                        p.request_hash.as_str(),
                        *id,
                        p.settings.idempotency_ttl_seconds as i64,
                    )
                })
            })
            .collect();
        let audit_rows = audit::Columns::of(
            runs.iter()
                .zip(&ids)
                .map(|(p, id)| p.audit_entry(*id))
                .collect(),
        );
        // Runs, keys and audit rows in one statement; nothing written when a key is taken.
        let written = repo::insert_runs_keys_audit_guarded(
            tx,
            project.as_str(),
            &runs
                .iter()
                .zip(&ids)
                .map(|(p, id)| p.new_run(*id))
                .collect::<Vec<_>>(),
            &keyed,
            &audit_rows,
            guard,
        )
        .await?;
        if !written {
            return Ok(None);
        }
        Ok(Some(
            runs.iter()
                .zip(&ids)
                .map(|(p, id)| p.accepted(*id))
                .collect(),
        ))
    }

    /// Insert a prepared run (and its idempotency key and audit row) in the caller's tenant
    /// transaction. An earlier run with the same idempotency key and request is returned
    /// instead (`replayed`).
    pub async fn insert_prepared(
        tx: &mut sqlx::PgConnection,
        p: &PreparedRun,
    ) -> Result<RunAccepted> {
        if tenancy::require()? != p.project {
            return Err(Error::new(
                ErrorCode::TenantMissing,
                "a prepared run can only be inserted in its own project's scope",
            ));
        }
        let key = p.idempotency_key.as_deref();
        if let Some(key) = key
            && let Some(existing) = repo::idempotent_run(tx, key, &p.request_hash).await?
        {
            return Ok(existing);
        }
        let run_id = p.run_id;
        repo::insert_run(tx, &p.new_run(run_id)).await?;
        if let Some(key) = key {
            repo::insert_idempotency_key(
                tx,
                p.project.as_str(),
                key,
                &p.request_hash,
                run_id,
                p.settings.idempotency_ttl_seconds as i64,
            )
            .await?;
        }
        audit::record(tx, p.audit_entry(run_id)).await?;
        Ok(p.accepted(run_id))
    }

    pub async fn get(&self, run_id: Uuid) -> Result<RunDetail> {
        let mut tx = self.control.db().tenant().await?;
        let run = repo::run(&mut tx, run_id).await?.ok_or_else(not_found)?;
        let steps = repo::steps(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(RunDetail { run, steps })
    }

    pub async fn list(&self, q: ListQuery) -> Result<RunPage> {
        let state = q.state.as_deref().map(RunState::parse).transpose()?;
        let limit = q.limit.unwrap_or(50).clamp(1, 500);
        let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
        let mut tx = self.control.db().tenant().await?;
        let runs = repo::list(&mut tx, state, q.agent.as_deref(), cursor, limit + 1).await?;
        tx.commit().await?;
        let mut runs = runs;
        let next_cursor = if runs.len() as i64 > limit {
            runs.truncate(limit as usize);
            runs.last()
                .map(|r| format!("{}_{}", r.created_at.timestamp_micros(), r.run_id))
        } else {
            None
        };
        Ok(RunPage { runs, next_cursor })
    }

    /// Cancel a run that has not finished. A running run is cancelled in place; its worker's
    /// late result is fenced out by the state check.
    pub async fn cancel(&self, actor: &Actor, run_id: Uuid) -> Result<RunView> {
        actor.require(Role::Runner)?;
        let mut tx = self.control.db().tenant().await?;
        let run = repo::run_for_update(&mut tx, run_id)
            .await?
            .ok_or_else(not_found)?;
        let from = RunState::parse(&run.state)?;
        from.check(RunState::Cancelled)?;
        repo::finish(
            &mut tx,
            run_id,
            None,
            RunState::Cancelled,
            None,
            Some((ErrorCode::RunCancelled.as_str(), "cancelled by request")),
        )
        .await?;
        audit::record(
            &mut tx,
            Entry {
                trace_id: Some(run.trace_id.clone()),
                ..Entry::ok(
                    &actor.principal,
                    "run.cancel",
                    run_id.to_string(),
                    json!({"from": from.as_str()}),
                )
            },
        )
        .await?;
        let view = repo::run(&mut tx, run_id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        Ok(view)
    }

    /// Resume a run waiting for approval: back to the queue, where a worker continues after
    /// the last completed step (the journal makes completed steps skip).
    pub async fn approve(&self, actor: &Actor, run_id: Uuid, approved: bool) -> Result<RunView> {
        actor.require(Role::Approver)?;
        let mut tx = self.control.db().tenant().await?;
        let run = repo::run_for_update(&mut tx, run_id)
            .await?
            .ok_or_else(not_found)?;
        let from = RunState::parse(&run.state)?;
        // A run parked on a tool call waits for its approval request (M-of-N, token bound to
        // the arguments), never for this single-approver switch.
        let on_request: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM approval_requests WHERE run_id = $1 AND state = 'pending')",
        )
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await?;
        if on_request {
            return Err(Error::new(
                ErrorCode::RunIllegalTransition,
                "this run waits on an approval request: decide it at /v1/platform/approvals/{id}/decisions",
            ));
        }
        let to = if approved {
            RunState::Queued
        } else {
            RunState::Failed
        };
        from.check(to)?;
        if approved {
            repo::requeue_approved(&mut tx, run_id, &actor.principal).await?;
        } else {
            repo::finish(
                &mut tx,
                run_id,
                None,
                RunState::Failed,
                None,
                Some(("E-RUN-011", "approval rejected")),
            )
            .await?;
        }
        audit::record(
            &mut tx,
            Entry {
                trace_id: Some(run.trace_id.clone()),
                ..Entry::ok(
                    &actor.principal,
                    if approved {
                        "run.approve"
                    } else {
                        "run.reject"
                    },
                    run_id.to_string(),
                    json!({}),
                )
            },
        )
        .await?;
        let view = repo::run(&mut tx, run_id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        Ok(view)
    }
}

fn not_found() -> Error {
    Error::new(ErrorCode::RunNotFound, "run not found")
}

pub fn valid_idempotency_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn parse_cursor(c: &str) -> Result<(DateTime<Utc>, Uuid)> {
    let bad = || Error::new(ErrorCode::ReqInvalidParam, "invalid cursor");
    let (ts, id) = c.split_once('_').ok_or_else(bad)?;
    let ts: i64 = ts.parse().map_err(|_| bad())?;
    let ts = DateTime::<Utc>::from_timestamp_micros(ts).ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((ts, id))
}
