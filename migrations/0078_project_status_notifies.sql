-- A project's status and allow_destructive changes notify `awooop_activation` (issue 18).
--
-- Why: the gateway caches a snapshot of the facts its gates read per project (status,
-- allow_destructive, migration mode, active revisions) and the channel hub caches channels and
-- run bases. Activations and migration-mode changes notify `awooop_activation` from the code
-- that makes them, so those caches drop the project at once; a project's status had no such
-- notice (no API changes it: an operator suspends or retires a project in SQL), so a suspended
-- project kept its tools until the cache's TTL ran out. That TTL was 1 s for that reason alone,
-- and every call of an agent calling less than once a second paid a snapshot load (a tenant
-- transaction, 1-2 ms on the test machine; docs/benchmarks.md, "Session 18"). With every input
-- notified, and caches dropping everything whenever their listener was not listening
-- (awooop_control::invalidation), the TTL only bounds staleness when a listener's connection
-- hangs without failing, and can be long.
--
-- How: a row trigger, so any writer (the API, an operator's psql session, a restore) notifies,
-- in the changing transaction and delivered on commit, with the payload shape every listener
-- reads (`project_id`; listeners ignore the rest). allow_destructive is also set by the
-- Project contract's activation, which notifies on its own: one more notice per such
-- activation, and activations are rare. The operator follows the same channel and reconciles
-- the project, so a retired project's resources now go at once instead of at the next resync.

CREATE FUNCTION awooop_project_status_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('awooop_activation',
        json_build_object('project_id', NEW.project_id, 'kind', 'project_status',
            'status', NEW.status)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER projects_status_notify AFTER UPDATE OF status, allow_destructive ON projects
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          OR NEW.allow_destructive IS DISTINCT FROM OLD.allow_destructive)
    EXECUTE FUNCTION awooop_project_status_notify();
