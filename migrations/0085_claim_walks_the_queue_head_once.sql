-- The claim walks each project's queue head once, not three times (issue 18; docs/benchmarks.md,
-- "Session 32").
--
-- Why: a claimed run's old row version leaves its entry in `runs_claimable_project` (the queue
-- index, partial on queued/retrying). PostgreSQL marks such an entry dead, so later scans skip
-- it, only once no transaction anywhere on the server can still see the old version. While
-- any transaction holds an older snapshot (a pg_dump, a report, a session left idle in a
-- transaction, in any database of the server), nothing is marked, and every probe of a
-- project's oldest queued run walks every run of that project claimed since, fetching each
-- from the heap to find it invisible. awooop_claim_projects made three such probes per project
-- (the loose scan that finds the project, then its head, then the head's max_concurrent) and
-- the claim statement three more (head, max_concurrent, the claim's own scan): one 70-second
-- snapshot held in the `postgres` database during `awooop bench runs --quick --runs 20000`
-- cut the capped drain from about 3,500 to 1,521 runs/s and raised the pickup p50 from 1.8 to
-- 16 ms.
--
-- What changes: the loose scan returns the first entry of each project in index order, which
-- is its oldest queued run, with created_at and max_concurrent (both in the index); the head
-- and max_concurrent probes are gone. The bound worker's path reads its project's head once,
-- as before. The claim statement (operator/runtime/src/repo.rs CLAIM_SQL) reads each project's
-- head and max_concurrent in one probe and starts its claim scan at that head, with bitmap
-- scans off in the claim's transaction (repo::CLAIM_BEGIN). Two walks per claim instead of six
-- (four for a project-bound worker's claim).
--
-- What stays: the same projects, locked the same way, in the same order (oldest queued run
-- first, ties by project id), with their running runs counted after the lock; the same
-- outputs, so the claim statement and older workers read it unchanged.
CREATE OR REPLACE FUNCTION awooop_claim_projects(want bigint, only_project text,
                                                 OUT locked text[], OUT busy bigint[],
                                                 OUT passed_over int, OUT queued int)
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
        -- Every project with queued runs (a loose scan of the queue index): the first entry of
        -- each project in index order, (project_id, created_at), is its oldest queued run, so
        -- one descent per project gives the project, its head and the head's max_concurrent.
        WITH RECURSIVE qp AS (
            (SELECT r.project_id, r.created_at, r.max_concurrent FROM runs r
             WHERE r.state IN ('queued', 'retrying')
             ORDER BY r.project_id, r.created_at LIMIT 1)
          UNION ALL
            SELECT nx.project_id, nx.created_at, nx.max_concurrent
            FROM qp CROSS JOIN LATERAL (
                SELECT r.project_id, r.created_at, r.max_concurrent FROM runs r
                WHERE r.state IN ('queued', 'retrying') AND r.project_id > qp.project_id
                ORDER BY r.project_id, r.created_at LIMIT 1) nx)
        SELECT array_agg(qp.project_id ORDER BY qp.created_at, qp.project_id),
               array_agg(qp.max_concurrent ORDER BY qp.created_at, qp.project_id)
        INTO v_projects, v_mcs
        FROM qp;
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
