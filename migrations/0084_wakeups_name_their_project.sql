-- Wake-ups that name their project, and a claim that says whether anything is queued (issue 18;
-- docs/benchmarks.md, "Session 31").
--
-- Why: every worker pod listens on `awooop_runs`, whose notices carried no project. The
-- operator runs one worker Deployment per project (`awooop worker --project P`), so every run
-- created in any project woke every tenant's workers, and each ran a claim transaction that
-- could only find nothing: with 16 tenants, 16 claims per run created, 15 of them for other
-- tenants' work (`awooop bench idle`). And a worker with an empty queue still claimed at its
-- fallback poll, twice a second, which was most of what an idle worker cost the database.
--
-- What changes:
-- * `awooop_runs` notices carry the project: the row triggers (re-queue, re-lock) send
--   NEW.project_id, the INSERT statement trigger one notice per project it inserted into (a
--   transition table). A bound worker ignores other projects' notices
--   (awooop_store::notify::runs_notice_wakes); an unbound worker wakes on all of them. An empty
--   payload (a notice from before this migration) still wakes every worker. Deferred creation
--   (migration 0071) is announced by the writer's notifier with the project too.
-- * `awooop_outbound` notices carry the project the same way, for the delivery workers.
-- * awooop_claim_projects returns `queued`: how many projects it found with queued or retrying
--   runs in its scope (the bound worker's own project, or all). A claim that finds none lets a
--   worker whose listener is up wait for a notice (or its idle bound) instead of its fallback
--   poll: every way a run enters the queue notifies (creation, re-queue, re-lock, and now a
--   retry too: runs_notify_requeue fires on entering `retrying` as well as `queued`), and a run
--   in the queue that is not claimable yet (a run_after in the future, a project at its cap)
--   keeps the claim's `queued` above zero and the worker on its poll. Before this migration a
--   run entering `retrying` (a retry after a failure, a lease the reaper took back) sent no
--   notice: the workers found it at their next poll, which an idle worker no longer runs.
--
-- What stays: notices are still wake-ups, never data; the claim locks, counts and returns the
-- same projects in the same order.

CREATE OR REPLACE FUNCTION awooop_runs_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Row triggers only now (runs_notify_requeue, runs_notify_relocked): the INSERT statement
    -- trigger has its own function below.
    PERFORM pg_notify('awooop_runs', NEW.project_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION awooop_runs_notify_inserted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF awooop_notify_deferred() THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('awooop_runs', p.project_id)
    FROM (SELECT DISTINCT n.project_id FROM new_runs n) p;
    RETURN NULL;
END
$$;

DROP TRIGGER runs_notify_requeue ON runs;
CREATE TRIGGER runs_notify_requeue AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'retrying') AND OLD.state NOT IN ('queued', 'retrying'))
    EXECUTE FUNCTION awooop_runs_notify();

DROP TRIGGER runs_notify ON runs;
CREATE TRIGGER runs_notify AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_runs_notify_inserted();

CREATE OR REPLACE FUNCTION awooop_outbound_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('awooop_outbound', p.project_id)
    FROM (SELECT DISTINCT n.project_id FROM new_messages n) p;
    RETURN NULL;
END
$$;

DROP TRIGGER outbound_messages_notify ON outbound_messages;
CREATE TRIGGER outbound_messages_notify AFTER INSERT ON outbound_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_outbound_notify();

-- 0083's function with one more output, `queued` (NULL when nothing was asked for).
DROP FUNCTION awooop_claim_projects(bigint, text);
CREATE FUNCTION awooop_claim_projects(want bigint, only_project text,
                                      OUT locked text[], OUT busy bigint[], OUT passed_over int,
                                      OUT queued int)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    v_projects text[];
    v_mcs int[];
    v_project text;
    v_mc int;
    v_busy bigint;
    v_got bigint := 0;
BEGIN
    locked := '{}';
    busy := '{}';
    passed_over := 0;
    queued := NULL;
    IF want <= 0 THEN
        RETURN;
    END IF;
    IF only_project IS NOT NULL THEN
        -- The max_concurrent of the project's oldest queued run, if it has one.
        SELECT r.max_concurrent INTO v_mc FROM runs r
        WHERE r.project_id = only_project AND r.state IN ('queued', 'retrying')
        ORDER BY r.created_at LIMIT 1;
        IF FOUND THEN
            v_projects := ARRAY[only_project];
            v_mcs := ARRAY[v_mc];
        END IF;
    ELSE
        -- Every project with queued runs (a skip scan of the queue index), in the order of its
        -- oldest queued run, with that run's max_concurrent.
        WITH RECURSIVE qp AS (
            (SELECT r.project_id FROM runs r
             WHERE r.state IN ('queued', 'retrying')
             ORDER BY r.project_id LIMIT 1)
          UNION ALL
            SELECT (SELECT r.project_id FROM runs r
                    WHERE r.state IN ('queued', 'retrying') AND r.project_id > qp.project_id
                    ORDER BY r.project_id LIMIT 1)
            FROM qp WHERE qp.project_id IS NOT NULL)
        SELECT array_agg(x.project_id ORDER BY x.head, x.project_id),
               array_agg(x.mc ORDER BY x.head, x.project_id)
        INTO v_projects, v_mcs
        FROM (SELECT qp.project_id,
                     (SELECT r.created_at FROM runs r
                      WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying')
                      ORDER BY r.created_at LIMIT 1) AS head,
                     (SELECT r.max_concurrent FROM runs r
                      WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying')
                      ORDER BY r.created_at LIMIT 1) AS mc
              FROM qp WHERE qp.project_id IS NOT NULL OFFSET 0) x;
    END IF;
    queued := coalesce(cardinality(v_projects), 0);
    FOR i IN 1 .. coalesce(cardinality(v_projects), 0) LOOP
        v_project := v_projects[i];
        v_mc := v_mcs[i];
        IF pg_try_advisory_xact_lock(hashtextextended('awooop.claim/' || v_project, 0)) THEN
            SELECT count(*) INTO v_busy FROM runs r
            WHERE r.project_id = v_project AND r.state = 'running';
            IF v_mc > v_busy THEN
                locked := locked || v_project;
                busy := busy || v_busy;
                v_got := v_got + (v_mc - v_busy);
                EXIT WHEN v_got >= want;
            END IF;
        ELSE
            passed_over := passed_over + 1;
        END IF;
    END LOOP;
END
$$;
