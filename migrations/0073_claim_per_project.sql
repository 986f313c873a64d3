-- The claim takes each project's oldest queued runs, at most as many as the project may still
-- start, instead of the oldest queued runs of the whole queue (repo::claim_in).
--
-- Why: the claim locked the `n` oldest queued runs (FOR NO KEY UPDATE SKIP LOCKED) and only
-- then dropped those beyond their project's max_concurrent. A project at its cap with a deep
-- backlog therefore filled every claim's window with runs nobody could start: each claim
-- locked (and WAL-logged the locks of) up to `n` of them for nothing, and the runs of every
-- other project queued behind that backlog were never reached until it drained
-- (runtime::a_capped_projects_backlog_neither_starves_others_nor_is_locked_for_nothing).
--
-- The claim now finds the projects with queued runs by a skip scan of this index, and per
-- project locks at most its room (max_concurrent minus its running runs) of its oldest
-- runnable runs. The index replaces runs_claimable_fifo (0020), which only the claim used;
-- the per-project queue counts (metrics, the operator's projection) read this one as well.
CREATE INDEX runs_claimable_project ON runs (project_id, created_at)
    WHERE state IN ('queued', 'retrying');
DROP INDEX runs_claimable_fifo;
