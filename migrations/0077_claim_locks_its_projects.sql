-- A project's max_concurrent is a limit, not a throttle (issue 18).
--
-- Why: the claim (runtime::repo::CLAIM_SQL) starts at most `max_concurrent - running` runs of a
-- project, counting `running` from its snapshot. Two claims of the same project that run at the
-- same time both see the same committed count (neither sees the other's uncommitted runs, and
-- SKIP LOCKED passes over the other's locked rows without waiting), so each starts up to the
-- whole room: with four workers and a cap of 64, up to 244-256 runs of one project were seen
-- running at moments of `awooop bench runs` (docs/benchmarks.md, "Session 16"). A tenant's limit
-- is there to protect the other tenants' share of the workers; exceeded four times over, it does
-- not.
--
-- How: before its claim statement, a claim takes a transaction-scoped advisory lock per project
-- it means to claim from, with pg_try_advisory_xact_lock (it never waits: a project another
-- claim is claiming from is passed over, as SKIP LOCKED passes over a locked run, and the next
-- claim takes it). It counts the project's running runs after the lock, in a new statement and
-- so, under READ COMMITTED, a new snapshot: that count includes every earlier claim of the
-- project (a transaction's locks are released after its commit is visible), and no other claim
-- can start runs of the project until this one commits. The claim statement claims only from
-- the projects locked, against those counts. A completion only lowers the count, so one not yet
-- seen errs on the safe side. The lock lives in memory only (no row is written or WAL-logged);
-- key: hashtextextended('awooop.claim/' || project_id, 0), 64 bits (the other advisory locks
-- hash strings that begin with a project id and a '/', which no project id contains). Two
-- projects whose keys collided would share a lock: their claims would take turns, nothing would
-- be counted wrong.
--
-- Which projects: those with queued runs, in the order of their oldest queued run, as the claim
-- visits them. Each is locked, then its running runs are counted (a new statement in a VOLATILE
-- function: a new snapshot, taken after the lock), and kept if it has room, until the room kept
-- covers the claim's size: a claim of 16 locks one project when the first has room for 16. The
-- count is returned with the project, and the claim statement uses it instead of counting
-- again: once locked, no other claim can start runs of the project, and a completion only
-- lowers the count. A project at its cap is locked and counted, and not kept (its lock is held
-- to the end of the claim's transaction, a few milliseconds). Runs in the claim's worker scope
-- (awooop.scope = 'worker').
--
-- Returns the projects kept, their running counts, and how many projects were passed over
-- because another claim held them: a worker whose claim came back short for that reason tries
-- again shortly rather than at its next wake-up (runtime::worker).
CREATE FUNCTION awooop_claim_projects(want bigint, only_project text,
                                      OUT locked text[], OUT busy bigint[], OUT passed_over int)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    v_project text;
    v_mc int;
    v_busy bigint;
    v_got bigint := 0;
BEGIN
    locked := '{}';
    busy := '{}';
    passed_over := 0;
    IF want <= 0 THEN
        RETURN;
    END IF;
    FOR v_project, v_mc IN
        WITH RECURSIVE qp AS (
            (SELECT r.project_id FROM runs r
             WHERE r.state IN ('queued', 'retrying') AND (only_project IS NULL OR r.project_id = only_project)
             ORDER BY r.project_id LIMIT 1)
          UNION ALL
            SELECT (SELECT r.project_id FROM runs r
                    WHERE r.state IN ('queued', 'retrying') AND r.project_id > qp.project_id
                      AND (only_project IS NULL OR r.project_id = only_project)
                    ORDER BY r.project_id LIMIT 1)
            FROM qp WHERE qp.project_id IS NOT NULL)
        SELECT x.project_id, x.mc
        FROM (SELECT qp.project_id,
                     (SELECT r.created_at FROM runs r
                      WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying')
                      ORDER BY r.created_at LIMIT 1) AS head,
                     (SELECT r.max_concurrent FROM runs r
                      WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying')
                      ORDER BY r.created_at LIMIT 1) AS mc
              FROM qp WHERE qp.project_id IS NOT NULL OFFSET 0) x
        ORDER BY x.head, x.project_id
    LOOP
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
