-- The claim reads only what the claiming projects need (issue 18): their running runs from an
-- index of each project's running runs, their oldest queued run and its cap from the queue
-- index alone.
--
-- Why: the claim enforces each project's max_concurrent by counting its running runs
-- (repo::claim_in, `busy`). The only index of running runs was runs_leased (lease_expires_at,
-- for the reaper), so the count read every running run of every tenant and fetched each row to
-- see its project: a tenant with 10,000 runs in flight made every other tenant's claims cost
-- twice as much in PostgreSQL (118 -> 234 us per claimed run at batch 16,
-- scripts/profile-drain-db.sh with OTHER_RUNNING=10000, docs/benchmarks.md "Session 15"). With this index the count reads the claiming project's
-- running runs only.
--
-- What it costs: one more index entry for each row version of a running run (the claim's and
-- each heartbeat's; a finished run's version is not in the partial index); no difference in
-- the single-project drain within its spread. runs_leased stays: the reaper looks for expired
-- leases across projects.
CREATE INDEX runs_running_project ON runs (project_id) WHERE state = 'running';

-- The queue index carries each run's max_concurrent (INCLUDE), so the claim reads a project's
-- oldest queued run and its cap from the index alone (an index-only probe per project). The
-- planner otherwise fetched every queued run of each project to sort them when it needed the
-- cap from the row: 0.14-0.2 ms per project and claim with 200 queued runs each.
CREATE INDEX runs_claimable_project_0076 ON runs (project_id, created_at) INCLUDE (max_concurrent)
    WHERE state IN ('queued', 'retrying');
DROP INDEX runs_claimable_project;
ALTER INDEX runs_claimable_project_0076 RENAME TO runs_claimable_project;
