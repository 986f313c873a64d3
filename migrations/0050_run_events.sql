-- Run events: the one source of a run's progress, read by GET /v1/platform/runs/{id}/events
-- (Server-Sent Events, resumable with Last-Event-ID), the console and the channel hub.
--
-- Events are written by triggers in the same transaction as the change they describe, so an
-- event exists exactly when its change committed, whichever code path made it (worker, reaper,
-- cancel, approvals). Each run numbers its events 1, 2, 3, ... (`runs.event_seq`): the SSE id
-- is that number, so a client learns nothing about other runs or tenants from it. The counter
-- lives on the run row, so every writer of a run's events serialises on the run's row lock,
-- which the state changes take anyway (no second lock, no deadlock order to get wrong).
-- Each event is announced with pg_notify('awooop_run_events', '{project} {run} {seq}') on
-- commit; listeners then read the rows in the run's tenant scope (the payload carries no data).

ALTER TABLE runs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0 CHECK (event_seq >= 0);

CREATE TABLE run_events (
    project_id  text NOT NULL,
    run_id      uuid NOT NULL,
    seq         bigint NOT NULL CHECK (seq >= 1),
    kind        text NOT NULL CHECK (kind IN ('created', 'state', 'step', 'tool_call', 'approval_requested', 'output')),
    data        jsonb NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (project_id, run_id, seq),
    FOREIGN KEY (project_id, run_id) REFERENCES runs (project_id, run_id) ON DELETE CASCADE
);

ALTER TABLE run_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_events USING (project_id = awooop_current_project())
    WITH CHECK (project_id = awooop_current_project());
-- Workers and the reaper change run states in worker scope; the events they cause are written
-- there too (insert only: reading stays tenant-scoped).
CREATE POLICY worker_insert ON run_events FOR INSERT WITH CHECK (awooop_worker_scope());

GRANT SELECT, INSERT ON run_events TO awooop_app;
GRANT DELETE ON run_events TO awooop_app;   -- cascades from run retention, like run_steps

CREATE FUNCTION awooop_run_event(p text, r uuid, s bigint, k text, d jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO run_events (project_id, run_id, seq, kind, data) VALUES (p, r, s, k, d);
    PERFORM pg_notify('awooop_run_events', p || ' ' || r::text || ' ' || s::text);
END
$$;

-- A new run: its first event.
CREATE FUNCTION awooop_run_events_created() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.event_seq := 1;
    RETURN NEW;
END
$$;
CREATE TRIGGER run_events_created_seq BEFORE INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION awooop_run_events_created();

CREATE FUNCTION awooop_run_events_created_row() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM awooop_run_event(NEW.project_id, NEW.run_id, 1, 'created',
        jsonb_build_object('state', NEW.state, 'agent', NEW.agent, 'mode', NEW.mode));
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_created AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION awooop_run_events_created_row();

-- State changes (and, with them, approval requests and the final output). BEFORE UPDATE so the
-- counter moves in the same row version; the event row itself is written AFTER the update
-- (its foreign key needs the run, and a refused transition must leave no event).
CREATE FUNCTION awooop_run_events_state_seq() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        NEW.event_seq := OLD.event_seq + 1
            + (CASE WHEN NEW.state = 'waiting_approval' THEN 1 ELSE 0 END)
            + (CASE WHEN NEW.state = 'succeeded' THEN 1 ELSE 0 END);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER run_events_state_seq BEFORE UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION awooop_run_events_state_seq();

CREATE FUNCTION awooop_run_events_state() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    s bigint := OLD.event_seq + 1;
BEGIN
    PERFORM awooop_run_event(NEW.project_id, NEW.run_id, s, 'state',
        jsonb_strip_nulls(jsonb_build_object('from', OLD.state, 'state', NEW.state,
            'attempt', NEW.attempt, 'error_code', NEW.error_code)));
    IF NEW.state = 'waiting_approval' THEN
        PERFORM awooop_run_event(NEW.project_id, NEW.run_id, s + 1, 'approval_requested',
            '{}'::jsonb);
    ELSIF NEW.state = 'succeeded' THEN
        PERFORM awooop_run_event(NEW.project_id, NEW.run_id, s + 1, 'output',
            jsonb_build_object('output', NEW.output));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_state AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION awooop_run_events_state();

-- Journal steps: what ran, never its output (tool results stay in the journal, behind the
-- run's own API; the stream carries names, statuses and codes).
CREATE FUNCTION awooop_run_events_step() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    s bigint;
BEGIN
    UPDATE runs SET event_seq = event_seq + 1
        WHERE project_id = NEW.project_id AND run_id = NEW.run_id
        RETURNING event_seq INTO s;
    IF s IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM awooop_run_event(NEW.project_id, NEW.run_id, s,
        CASE WHEN NEW.status = 'waiting' THEN 'approval_requested' ELSE 'step' END,
        jsonb_strip_nulls(jsonb_build_object('index', NEW.step_index, 'key', NEW.step_key,
            'type', NEW.step_type, 'status', NEW.status, 'attempt', NEW.attempt,
            'error_code', NEW.error_code)));
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_step AFTER INSERT ON run_steps
    FOR EACH ROW EXECUTE FUNCTION awooop_run_events_step();

-- Tool calls by name, from the gateway's audit (allowed and denied, with the denial's code).
CREATE FUNCTION awooop_run_events_tool() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    s bigint;
BEGIN
    IF NEW.run_id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE runs SET event_seq = event_seq + 1
        WHERE project_id = NEW.project_id AND run_id = NEW.run_id
        RETURNING event_seq INTO s;
    IF s IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM awooop_run_event(NEW.project_id, NEW.run_id, s, 'tool_call',
        jsonb_strip_nulls(jsonb_build_object('tool', NEW.tool, 'decision', NEW.decision,
            'status', NEW.result_status, 'code', NEW.code, 'latency_us', NEW.latency_us)));
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_tool AFTER INSERT ON mcp_call_audit
    FOR EACH ROW EXECUTE FUNCTION awooop_run_events_tool();
