-- Run events written once per statement instead of once per row (issue 18, "Runs").
--
-- Why: the row-level triggers of 0050 were most of the database time of a run. A profile of one
-- claim batch and one completion batch of 64 runs (docs/benchmarks.md, "perf-runs") spent about
-- three quarters of the statements' time in the event triggers: per run, three PL/pgSQL calls of
-- awooop_run_event (an INSERT and a pg_notify each), plus, for every journal row, one more UPDATE
-- of the run row through PL/pgSQL. Statement-level triggers with transition tables write the
-- same rows with one INSERT ... SELECT per statement, and bump the counters of a batch's runs
-- with one UPDATE.
--
-- What stays the same (the contract of 0050): every committed state change and journal row has
-- its event, written in the same transaction; each run numbers its events 1, 2, 3, ... on its own
-- row (`runs.event_seq`, moved by the BEFORE row trigger run_events_state_seq for state changes,
-- which stays, and by the UPDATE below for journal rows); a refused transition leaves no event
-- (the state machine's BEFORE trigger raises before any AFTER trigger runs).
--
-- What changes: one NOTIFY per run and statement, carrying that run's highest new seq, instead
-- of one per event. Listeners treat a notice as "events up to seq exist" and read every event
-- after their cursor (http::events), so a notice for the last of a statement's events wakes them
-- for all of them; notices were already only a wake-up (store::events).

DROP TRIGGER run_events_created ON runs;
DROP TRIGGER run_events_state ON runs;
DROP TRIGGER run_events_step ON run_steps;

-- New runs: their `created` event (seq 1, set by the BEFORE row trigger run_events_created_seq).
CREATE FUNCTION awooop_run_events_created_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO run_events (project_id, run_id, seq, kind, data)
    SELECT n.project_id, n.run_id, 1, 'created',
           jsonb_build_object('state', n.state, 'agent', n.agent, 'mode', n.mode)
    FROM new_runs n;
    PERFORM pg_notify('awooop_run_events', n.project_id || ' ' || n.run_id::text || ' 1')
    FROM new_runs n;
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_created AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_run_events_created_stmt();

-- State changes, with the approval request and the final output events. A transition table
-- cannot go with a column list (`UPDATE OF state`), so this fires for every UPDATE of runs and
-- keeps only the rows whose state changed (heartbeats and counter bumps write no event).
CREATE FUNCTION awooop_run_events_state_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    notified bigint;
BEGIN
    WITH changed AS (
        SELECT n.project_id, n.run_id, o.event_seq + 1 AS s, o.state AS old_state, n.state,
               n.attempt, n.error_code, n.output
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
CREATE TRIGGER run_events_state AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_run_events_state_stmt();

-- Journal rows: one UPDATE moves the counters of every run in the statement by its number of
-- new rows; the rows are numbered in the order they were journalled (finished_at is
-- clock_timestamp() per row; a tool call's intent precedes its result at the same index).
-- What ran, never its output (as in 0050).
CREATE FUNCTION awooop_run_events_step_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    notified bigint;
BEGIN
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
CREATE TRIGGER run_events_step AFTER INSERT ON run_steps
    REFERENCING NEW TABLE AS new_steps
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_run_events_step_stmt();

DROP FUNCTION awooop_run_events_created_row();
DROP FUNCTION awooop_run_events_state();
DROP FUNCTION awooop_run_events_step();
