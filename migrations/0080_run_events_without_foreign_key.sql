-- Run events keep no foreign key to their run (issue 18, "Runs"; docs/benchmarks.md,
-- "Session 22").
--
-- Why: the key's check ran once per event row (3-4 per drained run) as
-- `SELECT 1 FROM runs ... FOR KEY SHARE`, and the first check in a transaction locks the run's
-- newest version, which that transaction had just written (created, claimed or completed):
-- a lock record in the WAL and a dirtied page per run and transaction, for a run the
-- transaction already holds. Every version of a drained run was left with its writer's lock
-- in `xmax`. Dropping the key on a scratch database made `bench runs` 8-17 % faster on the
-- capped path.
--
-- What the key guaranteed, and what guarantees it now:
-- * An event belongs to a run that exists. Events are written only by the triggers of 0060,
--   0071, 0074 and 0075, each for runs its own statement has just inserted, updated or locked
--   (AFTER INSERT/UPDATE of runs, the step trigger's row lock or the journal's own key to
--   runs, the tool-call trigger's UPDATE of runs). A run is deleted under its row lock, so a
--   concurrent writer of its events either finishes first or finds no run and writes nothing.
-- * A run's events go with it (ON DELETE CASCADE): the statement trigger below deletes them in
--   the same statement. The cascade ran as the table owner, past row-level security; this
--   trigger runs as the deleter, so where row-level security applies it refuses to delete
--   runs of any project but the current one (only retention deletes runs, in the run's own
--   tenant scope), rather than leave events behind that the deleter cannot see.

ALTER TABLE run_events DROP CONSTRAINT run_events_project_id_run_id_fkey;

CREATE FUNCTION awooop_run_events_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF row_security_active('run_events') AND EXISTS (
        SELECT 1 FROM old_runs o WHERE o.project_id IS DISTINCT FROM awooop_current_project()
    ) THEN
        RAISE EXCEPTION 'runs are deleted in their own project''s scope'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'their events are visible only there and would be left behind';
    END IF;
    DELETE FROM run_events e
    USING (SELECT DISTINCT project_id, run_id FROM old_runs) o
    WHERE e.project_id = o.project_id AND e.run_id = o.run_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER run_events_deleted AFTER DELETE ON runs
    REFERENCING OLD TABLE AS old_runs
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_run_events_deleted();
