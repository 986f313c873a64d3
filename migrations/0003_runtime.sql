-- AwoooP runtime: durable runs, the step journal and idempotency keys.
--
-- Eight run states (docs/runtime.md has the table):
--   queued → running → succeeded | failed | cancelled | timed_out
--   running → waiting_approval → queued (approved) | failed (rejected) | cancelled | timed_out
--   running → retrying (lease lost / transient error, with backoff) → running | failed | cancelled | timed_out
-- Illegal transitions are rejected here (trigger, SQLSTATE AW002) and in code (runtime::state).

CREATE TABLE runs (
    project_id           text NOT NULL REFERENCES projects (project_id),
    run_id               uuid NOT NULL,
    agent                text NOT NULL CHECK (agent ~ '^[a-z][a-z0-9-]{0,62}$'),
    mode                 text NOT NULL CHECK (mode IN ('shadow', 'canary', 'read_only', 'suggest', 'auto_remediate')),
    state                text NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'running', 'waiting_approval', 'retrying', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    input                jsonb NOT NULL,
    input_hash           text NOT NULL CHECK (input_hash ~ '^sha256:[0-9a-f]{64}$'),
    agent_revision_id    uuid NOT NULL,
    agent_body_hash      text NOT NULL,
    project_revision_id  uuid,
    project_body_hash    text,
    trace_id             text NOT NULL CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    span_id              text NOT NULL CHECK (span_id ~ '^[0-9a-f]{16}$'),
    idempotency_key      text,
    attempt              integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts         integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 20),
    -- From the project's Runtime contract; the effective lease is the shorter of this and the
    -- worker's own --lease-seconds.
    lease_seconds        integer NOT NULL DEFAULT 30 CHECK (lease_seconds BETWEEN 1 AND 3600),
    -- The project's Runtime contract `max_concurrent_runs` when the run was created.
    max_concurrent       integer NOT NULL DEFAULT 64 CHECK (max_concurrent >= 1),
    run_after            timestamptz NOT NULL DEFAULT now(),
    worker_id            text,
    lease_expires_at     timestamptz,
    heartbeat_at         timestamptz,
    deadline_at          timestamptz NOT NULL,
    cancel_requested     boolean NOT NULL DEFAULT false,
    output               jsonb,
    error_code           text,
    error_message        text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, run_id),
    CHECK (state <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- The hot paths index only live rows, with literal state predicates the planner can match:
-- the queue (claim) and the leases (reaper). Finished runs add nothing to these indexes.
CREATE INDEX runs_claimable ON runs (run_after) WHERE state IN ('queued', 'retrying');
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX runs_deadline ON runs (deadline_at) WHERE state IN ('queued', 'retrying', 'running', 'waiting_approval');
CREATE INDEX runs_by_created ON runs (project_id, created_at DESC, run_id DESC);
-- Run ids are UUID v7, unique on their own: workers (which see every project) address runs
-- by id alone, and this index keeps their heartbeats and fenced updates off sequential scans.
CREATE UNIQUE INDEX runs_run_id ON runs (run_id);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE FUNCTION awooop_run_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.state = 'queued' AND NEW.state IN ('running', 'cancelled', 'timed_out', 'failed')) OR
        (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'waiting_approval', 'retrying')) OR
        (OLD.state = 'waiting_approval' AND NEW.state IN ('queued', 'failed', 'cancelled', 'timed_out')) OR
        (OLD.state = 'retrying' AND NEW.state IN ('running', 'failed', 'cancelled', 'timed_out'))
    ) THEN
        RAISE EXCEPTION 'E-RUN-002: illegal run state transition % -> %', OLD.state, NEW.state
            USING ERRCODE = 'AW002';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_state_machine BEFORE UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION awooop_run_transition();

-- One row per step attempt. A step completes at most once per run (partial unique index),
-- so a resumed run can never record a completed step again.
CREATE TABLE run_steps (
    project_id     text NOT NULL,
    run_id         uuid NOT NULL,
    step_index     integer NOT NULL CHECK (step_index >= 0),
    attempt        integer NOT NULL CHECK (attempt >= 1),
    step_key       text NOT NULL,
    step_type      text NOT NULL,
    input_hash     text NOT NULL,
    status         text NOT NULL CHECK (status IN ('succeeded', 'failed', 'waiting')),
    output         jsonb,
    error_code     text,
    trace_id       text NOT NULL,
    span_id        text NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (project_id, run_id, step_index, attempt, status),
    FOREIGN KEY (project_id, run_id) REFERENCES runs (project_id, run_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX run_steps_once ON run_steps (project_id, run_id, step_index) WHERE status = 'succeeded';

CREATE TABLE idempotency_keys (
    project_id    text NOT NULL REFERENCES projects (project_id),
    key           text NOT NULL CHECK (key ~ '^[A-Za-z0-9._:-]{1,128}$'),
    request_hash  text NOT NULL,
    run_id        uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['runs', 'run_steps', 'idempotency_keys'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
    END LOOP;
END
$$;

-- Workers claim and reap across tenants; only the `runs` table answers in worker scope, and
-- only workers open such transactions (runtime::repo). Executing a run re-enters the run's
-- own tenant scope for everything else.
CREATE FUNCTION awooop_worker_scope() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.scope', true), '') = 'worker' $$;
CREATE POLICY worker_scope ON runs USING (awooop_worker_scope()) WITH CHECK (awooop_worker_scope());

GRANT SELECT, INSERT, UPDATE ON runs TO awooop_app;
GRANT DELETE ON runs TO awooop_app;            -- retention of finished runs only (runtime::retention)
GRANT SELECT, INSERT ON run_steps TO awooop_app;
GRANT DELETE ON run_steps TO awooop_app;       -- cascades from retention
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO awooop_app;

-- Wake workers when work arrives (payload-free: workers claim from the table).
CREATE FUNCTION awooop_runs_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('awooop_runs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_notify AFTER INSERT ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_runs_notify();
CREATE TRIGGER runs_notify_requeue AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND OLD.state <> 'queued') EXECUTE FUNCTION awooop_runs_notify();
