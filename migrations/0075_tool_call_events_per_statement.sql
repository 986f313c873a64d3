-- Tool-call events written once per statement instead of once per audit row (issue 18).
--
-- Why: run_events_tool (0050) was the last row-level event trigger. The gateway writes its call
-- audit in batches (gateway::audit, up to hundreds of rows per INSERT), and for every row the
-- trigger called PL/pgSQL and, for a call made by a run, updated that run's row to move its
-- event counter: one new version of the run (seven index entries) per tool call, and a batch of
-- n calls of one run updated it n times in one statement. Now, as for state changes and journal
-- rows since 0060, one statement-level trigger bumps each run of the batch once, by its number of
-- calls, and numbers the calls' events in the order they started (`at`, then `call_id`).
--
-- What stays: every audited call of an existing run has its `tool_call` event, in the audit
-- row's transaction, numbered under the run's row lock; a call without a run (an API key, or a
-- run token not bound to a run) or of a run that does not exist writes none; one NOTIFY per run
-- and statement with its highest new seq, as for the other event triggers.

DROP TRIGGER run_events_tool ON mcp_call_audit;

CREATE FUNCTION awooop_run_events_tool_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    notified bigint;
BEGIN
    -- Most batches carry no call of a run (API keys, unbound run tokens): leave at once, before
    -- planning or running the statement below.
    IF NOT EXISTS (SELECT 1 FROM new_calls WHERE run_id IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    WITH calls AS (
        SELECT * FROM new_calls WHERE run_id IS NOT NULL
    ), per_run AS (
        SELECT project_id, run_id, count(*) AS k FROM calls GROUP BY project_id, run_id
    ), bumped AS (
        UPDATE runs r SET event_seq = r.event_seq + p.k
        FROM per_run p
        WHERE r.project_id = p.project_id AND r.run_id = p.run_id
        RETURNING r.project_id, r.run_id, r.event_seq AS last, p.k
    ), ins AS (
        INSERT INTO run_events (project_id, run_id, seq, kind, data)
        SELECT c.project_id, c.run_id,
               b.last - b.k + row_number() OVER (PARTITION BY c.project_id, c.run_id
                   ORDER BY c.at, c.call_id),
               'tool_call',
               jsonb_strip_nulls(jsonb_build_object('tool', c.tool, 'decision', c.decision,
                   'status', c.result_status, 'code', c.code, 'latency_us', c.latency_us))
        FROM calls c JOIN bumped b ON b.project_id = c.project_id AND b.run_id = c.run_id
    )
    SELECT count(pg_notify('awooop_run_events', project_id || ' ' || run_id::text || ' ' || last::text))
    INTO notified
    FROM bumped;
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_tool AFTER INSERT ON mcp_call_audit
    REFERENCING NEW TABLE AS new_calls
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_run_events_tool_stmt();

DROP FUNCTION awooop_run_events_tool();
