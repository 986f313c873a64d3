-- A completion's journal rows are numbered under the run's row lock instead of by an UPDATE of
-- the run (issue 18, "Runs"; docs/benchmarks.md, "runs (session 10)").
--
-- Why: the completion writer ended every run with two updates of its row in one transaction:
-- the fenced state change, then run_events_step's `UPDATE runs SET event_seq = event_seq + k`
-- for the journal rows it wrote after it. Each is a new row version with its index entries
-- (`runs` has seven indexes and the updates are almost never HOT), so a third of the versions
-- a drained run leaves behind existed only to move a counter. Dropping run_events_step in a
-- scratch database made the bulk drain 23-26 % faster; the events must stay, the version need
-- not.
--
-- What changes, only in a transaction that sets `awooop.step_seq = 'deferred'` (the completion
-- writer, runtime::repo::complete_batch, which first locks its fenced runs FOR NO KEY UPDATE,
-- then writes their journal rows, then their state change):
-- * run_events_step locks the journal rows' runs (FOR NO KEY UPDATE: a lock, not a version)
--   and numbers their events after the highest event the run already has, without touching
--   `runs.event_seq`;
-- * the completion's UPDATE sets `event_seq` to the highest event of the run (the journal's
--   included), and the state-change triggers number the state events after it: they now start
--   from NEW.event_seq where they started from OLD.event_seq, and take the greater of the two,
--   so an UPDATE can move the counter forward, never back.
-- Every other transaction numbers exactly as before (its NEW.event_seq equals OLD.event_seq).
--
-- What stays: every committed journal row and state change has its event in the same
-- transaction; a run's events are numbered 1, 2, 3, ... with no gap (runs.event_seq is the last
-- once the run is terminal, and after every state change); concurrent writers of one run's
-- events are serialised by its row lock (the state change's UPDATE, the step trigger's lock,
-- the tool-call trigger's UPDATE). The one visible difference: a completion's journal events
-- now come before its state events (created, state running, step, state succeeded, output),
-- which is the order in which they happened; before, they came after the final state.

CREATE OR REPLACE FUNCTION awooop_step_seq_deferred() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.step_seq', true), '') = 'deferred' $$;

-- 0050's BEFORE row trigger: from the greater of the old and the new counter.
CREATE OR REPLACE FUNCTION awooop_run_events_state_seq() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        NEW.event_seq := greatest(OLD.event_seq, NEW.event_seq) + 1
            + (CASE WHEN NEW.state = 'waiting_approval' THEN 1 ELSE 0 END)
            + (CASE WHEN NEW.state = 'succeeded' THEN 1 ELSE 0 END);
    END IF;
    RETURN NEW;
END
$$;

-- 0060's state events: the first one is the one after the counter the BEFORE trigger started
-- from, that is NEW.event_seq minus the events of this change (the `changed` CTE alone differs).
CREATE OR REPLACE FUNCTION awooop_run_events_state_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    notified bigint;
BEGIN
    WITH changed AS (
        SELECT n.project_id, n.run_id,
               n.event_seq - (CASE WHEN n.state IN ('waiting_approval', 'succeeded') THEN 1 ELSE 0 END) AS s,
               o.state AS old_state, n.state, n.attempt, n.error_code, n.output
        FROM new_runs n JOIN old_runs o ON o.project_id = n.project_id AND o.run_id = n.run_id
        WHERE n.state IS DISTINCT FROM o.state
    ), ev AS (
        SELECT project_id, run_id, s AS seq, 'state' AS kind,
               jsonb_strip_nulls(jsonb_build_object('from', old_state, 'state', state,
                   'attempt', attempt, 'error_code', error_code)) AS data
        FROM changed
        UNION ALL
        SELECT project_id, run_id, s + 1, 'approval_requested', '{}'::jsonb
        FROM changed WHERE state = 'waiting_approval'
        UNION ALL
        SELECT project_id, run_id, s + 1, 'output', jsonb_build_object('output', output)
        FROM changed WHERE state = 'succeeded'
    ), ins AS (
        -- No RETURNING: it would need the SELECT policy of run_events, which worker scope
        -- (claims, the reaper) does not have. The statement inserts every row of `ev` or fails.
        INSERT INTO run_events (project_id, run_id, seq, kind, data)
        SELECT project_id, run_id, seq, kind, data FROM ev
    )
    SELECT count(pg_notify('awooop_run_events', project_id || ' ' || run_id::text || ' ' || last::text))
    INTO notified
    FROM (SELECT project_id, run_id, max(seq) AS last FROM ev GROUP BY project_id, run_id) l;
    RETURN NULL;
END
$$;

-- 0060's journal events. Outside deferred mode: unchanged (one UPDATE moves the counters).
-- In deferred mode: the runs are locked, not updated, and the events numbered after the
-- highest existing one; the caller's state change catches the counter up.
CREATE OR REPLACE FUNCTION awooop_run_events_step_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    notified bigint;
BEGIN
    IF awooop_step_seq_deferred() THEN
        -- The lock first, in a statement of its own: the numbering below then reads, with a
        -- snapshot taken after the lock was granted, every event a previous holder committed.
        PERFORM 1 FROM runs r
        WHERE (r.project_id, r.run_id) IN (SELECT project_id, run_id FROM new_steps)
        FOR NO KEY UPDATE OF r;
        WITH per_run AS (
            SELECT s.project_id, s.run_id, count(*) AS k,
                   greatest((SELECT r.event_seq FROM runs r
                             WHERE r.project_id = s.project_id AND r.run_id = s.run_id),
                            (SELECT coalesce(max(e.seq), 0) FROM run_events e
                             WHERE e.project_id = s.project_id AND e.run_id = s.run_id)) AS base
            FROM new_steps s GROUP BY s.project_id, s.run_id
        ), ins AS (
            INSERT INTO run_events (project_id, run_id, seq, kind, data)
            SELECT s.project_id, s.run_id,
                   p.base + row_number() OVER (PARTITION BY s.project_id, s.run_id
                       ORDER BY s.finished_at, s.step_index, (s.status <> 'intent'), s.attempt),
                   CASE WHEN s.status = 'waiting' THEN 'approval_requested' ELSE 'step' END,
                   jsonb_strip_nulls(jsonb_build_object('index', s.step_index, 'key', s.step_key,
                       'type', s.step_type, 'status', s.status, 'attempt', s.attempt,
                       'error_code', s.error_code))
            FROM new_steps s JOIN per_run p ON p.project_id = s.project_id AND p.run_id = s.run_id
        )
        SELECT count(pg_notify('awooop_run_events', project_id || ' ' || run_id::text || ' ' || (base + k)::text))
        INTO notified
        FROM per_run;
        RETURN NULL;
    END IF;
    WITH per_run AS (
        SELECT project_id, run_id, count(*) AS k FROM new_steps GROUP BY project_id, run_id
    ), bumped AS (
        UPDATE runs r SET event_seq = r.event_seq + p.k
        FROM per_run p
        WHERE r.project_id = p.project_id AND r.run_id = p.run_id
        RETURNING r.project_id, r.run_id, r.event_seq AS last, p.k
    ), ins AS (
        INSERT INTO run_events (project_id, run_id, seq, kind, data)
        SELECT s.project_id, s.run_id,
               b.last - b.k + row_number() OVER (PARTITION BY s.project_id, s.run_id
                   ORDER BY s.finished_at, s.step_index, (s.status <> 'intent'), s.attempt),
               CASE WHEN s.status = 'waiting' THEN 'approval_requested' ELSE 'step' END,
               jsonb_strip_nulls(jsonb_build_object('index', s.step_index, 'key', s.step_key,
                   'type', s.step_type, 'status', s.status, 'attempt', s.attempt,
                   'error_code', s.error_code))
        FROM new_steps s JOIN bumped b ON b.project_id = s.project_id AND b.run_id = s.run_id
    )
    SELECT count(pg_notify('awooop_run_events', project_id || ' ' || run_id::text || ' ' || last::text))
    INTO notified
    FROM bumped;
    RETURN NULL;
END
$$;
