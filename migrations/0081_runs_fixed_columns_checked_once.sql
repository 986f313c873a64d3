-- The checks of a run's fixed columns run when the columns are written, not on every update
-- (issue 18, "Runs"; docs/benchmarks.md, "Session 22").
--
-- Why: PostgreSQL evaluates every CHECK constraint of a table on every UPDATE, whichever
-- columns it sets, and rebuilds the constraints' expressions (parsed from their stored text)
-- once per statement. A drained run is updated twice (its claim, its completion), and eight of
-- the twelve checks of `runs` are of columns no update sets: the agent's name, the input hash,
-- the trace and span ids (four regular expressions), the mode and three limits. With those
-- eight dropped on a scratch database, `bench runs` was 7-10 % faster on the capped path and
-- 3-9 % on the bulk drain.
--
-- What stays: every row of `runs` satisfies the same eight conditions, with the same
-- constraint names, SQLSTATE 23514 and message.
-- * INSERT (and COPY): one statement-level trigger checks the statement's new rows, before
--   the statement completes (an AFTER trigger's error rolls the whole statement back).
-- * UPDATE that sets any of these columns: a row trigger (`BEFORE UPDATE OF ...`) checks the
--   new row. Updates that do not name them (claims, completions, heartbeats, the reaper) cannot
--   change them, so there is nothing to check.
-- The one difference: a session that disables triggers (superuser, session_replication_role
-- = replica, which disables foreign keys too) can write rows these checks would refuse.

ALTER TABLE runs
    DROP CONSTRAINT runs_agent_check,
    DROP CONSTRAINT runs_input_hash_check,
    DROP CONSTRAINT runs_trace_id_check,
    DROP CONSTRAINT runs_span_id_check,
    DROP CONSTRAINT runs_mode_check,
    DROP CONSTRAINT runs_max_attempts_check,
    DROP CONSTRAINT runs_lease_seconds_check,
    DROP CONSTRAINT runs_max_concurrent_check;

-- The first of the eight conditions a row fails, by its constraint's name (NULL: none). The
-- expressions are the dropped constraints' own; `IS FALSE` because a CHECK admits NULL.
CREATE FUNCTION awooop_runs_fixed_check(r runs) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN ((r.agent ~ '^[a-z][a-z0-9-]*$') AND (length(r.agent) <= 63)) IS FALSE
            THEN 'runs_agent_check'
        WHEN ((r.input_hash ~ '^sha256:[0-9a-f]+$') AND (length(r.input_hash) = 71)) IS FALSE
            THEN 'runs_input_hash_check'
        WHEN ((r.trace_id ~ '^[0-9a-f]+$') AND (length(r.trace_id) = 32)) IS FALSE
            THEN 'runs_trace_id_check'
        WHEN ((r.span_id ~ '^[0-9a-f]+$') AND (length(r.span_id) = 16)) IS FALSE
            THEN 'runs_span_id_check'
        WHEN (r.mode IN ('shadow', 'canary', 'read_only', 'suggest', 'auto_remediate')) IS FALSE
            THEN 'runs_mode_check'
        WHEN ((r.max_attempts >= 1) AND (r.max_attempts <= 20)) IS FALSE
            THEN 'runs_max_attempts_check'
        WHEN ((r.lease_seconds >= 1) AND (r.lease_seconds <= 3600)) IS FALSE
            THEN 'runs_lease_seconds_check'
        WHEN (r.max_concurrent >= 1) IS FALSE
            THEN 'runs_max_concurrent_check'
    END
$$;

CREATE FUNCTION awooop_runs_fixed_violation(failed text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'new row for relation "runs" violates check constraint "%"', failed
        USING ERRCODE = 'check_violation', CONSTRAINT = failed, TABLE = 'runs',
              SCHEMA = current_schema();
END
$$;

CREATE FUNCTION awooop_runs_fixed_inserted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    failed text;
BEGIN
    SELECT f INTO failed
    FROM (SELECT awooop_runs_fixed_check(n) AS f FROM new_runs n) x
    WHERE f IS NOT NULL
    LIMIT 1;
    IF failed IS NOT NULL THEN
        PERFORM awooop_runs_fixed_violation(failed);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_fixed_columns_inserted AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_runs_fixed_inserted();

CREATE FUNCTION awooop_runs_fixed_updated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    failed text := awooop_runs_fixed_check(NEW);
BEGIN
    IF failed IS NOT NULL THEN
        PERFORM awooop_runs_fixed_violation(failed);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_fixed_columns_updated BEFORE UPDATE OF agent, input_hash, trace_id,
    span_id, mode, max_attempts, lease_seconds, max_concurrent ON runs
    FOR EACH ROW EXECUTE FUNCTION awooop_runs_fixed_updated();
