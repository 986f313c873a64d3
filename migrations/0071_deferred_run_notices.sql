-- Wake-ups of new runs announced after the commit by the writer, instead of by NOTIFY inside
-- the writing transaction (issue 16 "Benchmark", issue 18 "Runs").
--
-- Why: a transaction that has called NOTIFY takes, when it commits, a lock that PostgreSQL
-- keeps until the commit is over, WAL flush included (async.c, PreCommit_Notify: an
-- AccessExclusiveLock on "database 0", so one lock for the whole cluster; it keeps queue
-- entries in commit order). Every transaction that creates a run notified twice (`awooop_runs`
-- for the workers, `awooop_run_events` for the event streams), so every inbound webhook's
-- group commit and every API run creation committed one at a time, each waiting for the
-- previous one's flush: concurrent commits could not share a WAL flush. pgbench on this
-- machine, 8 clients, `BEGIN; INSERT; COMMIT`: 3,300–4,200 tps; the same with a `pg_notify`
-- before the COMMIT: 1,200–1,500 tps (docs/benchmarks.md, "channels (session 8)").
--
-- What changes: a transaction that sets `awooop.defer_notify = 'on'` (SET LOCAL, in the same
-- simple query as its BEGIN) gets no NOTIFY from the triggers of run *creation* (runs_notify
-- on INSERT, run_events_created). Its writer announces the same wake-ups itself once COMMIT has
-- returned (awooop_store::notify: `awooop_runs` once, `awooop_run_events` '{project} {run} 1'
-- per run), from a connection of its own with synchronous_commit off, so that short
-- transaction holds the lock for microseconds and no data transaction holds it at all. Every
-- other transaction, and every other trigger (state changes, journal steps, re-queues, tool
-- calls), notifies exactly as before.
--
-- What stays: the rows (runs, run_events seq 1) are written by the same triggers in the same
-- transaction; notices were already only wake-ups (store::events, runtime::worker: a listener
-- may miss one on reconnect, so workers and event streams keep a fallback poll), and a
-- notice now follows the commit as it did before (PostgreSQL delivered it at commit).
-- A writer that crashes between its COMMIT and its notice leaves the run to the workers'
-- fallback poll: late, never lost.

-- Whether the current transaction's writer announces its new runs itself.
CREATE FUNCTION awooop_notify_deferred() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.defer_notify', true), '') = 'on' $$;

-- 0003's function, shared by runs_notify (AFTER INSERT, per statement), runs_notify_requeue
-- and runs_notify_relocked (AFTER UPDATE, per row): only the INSERT defers.
CREATE OR REPLACE FUNCTION awooop_runs_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'INSERT' AND awooop_notify_deferred() THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('awooop_runs', '');
    RETURN NULL;
END
$$;

-- 0060's function: the `created` events are written as before; their notices defer.
CREATE OR REPLACE FUNCTION awooop_run_events_created_stmt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO run_events (project_id, run_id, seq, kind, data)
    SELECT n.project_id, n.run_id, 1, 'created',
           jsonb_build_object('state', n.state, 'agent', n.agent, 'mode', n.mode)
    FROM new_runs n;
    IF NOT awooop_notify_deferred() THEN
        PERFORM pg_notify('awooop_run_events', n.project_id || ' ' || n.run_id::text || ' 1')
        FROM new_runs n;
    END IF;
    RETURN NULL;
END
$$;
