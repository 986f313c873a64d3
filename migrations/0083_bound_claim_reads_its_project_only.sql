-- A project-bound worker's claim reads its own project's queue only (issue 18; docs/benchmarks.md,
-- "Session 30").
--
-- Why: awooop_claim_projects (migration 0077) found the projects with queued runs with one query
-- for both kinds of worker, filtering a bound worker's project with
-- `(only_project IS NULL OR r.project_id = only_project)`. The claim's transaction plans its
-- statements generically (`plan_cache_mode = force_generic_plan`, runtime::repo::CLAIM_BEGIN),
-- and a generic plan cannot turn that disjunction into an index condition: it walked the queue
-- index `runs_claimable_project` in project order and filtered every entry. So a bound worker
-- whose own queue was empty read every other tenant's queued runs at each claim, and an idle one
-- claims twice a second: with 50,000 runs queued in one other project, one idle claim cost
-- 9.5 ms of PostgreSQL time instead of 0.16 ms (pgbench, the worker's transaction), and every
-- idle worker of every other tenant paid that while the backlog lasted. One tenant's backlog
-- made the whole platform's idle workers expensive.
--
-- What changes: a bound worker's candidates are its project alone, found with an equality on
-- the project (an index condition in any plan: two probes of `runs_claimable_project`); an
-- unbound worker's are found by the same skip scan as before, without the bound worker's
-- filter. What stays: the same projects in the same order, the same lock, count and room per
-- project, the same results.
CREATE OR REPLACE FUNCTION awooop_claim_projects(want bigint, only_project text,
                                                 OUT locked text[], OUT busy bigint[], OUT passed_over int)
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
