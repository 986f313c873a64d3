-- Wake workers again when a transaction that held a claimable run's row lock commits.
--
-- Workers claim with FOR ... SKIP LOCKED, so a claim passes over a queued run whose row another
-- transaction has locked at that moment, and it is woken only by NOTIFY (or its fallback poll).
-- Row locks on queued runs are not only taken by state changes: the run-event triggers (0050)
-- number a run's events on its row, and the gateway's call audit is written off the request
-- path, up to 50 ms after the call. An approved run is re-queued a few milliseconds after its
-- refused call, so that audit row often lands just then: the claim woken by the re-queue's
-- NOTIFY skipped the locked row, the audit committed without a NOTIFY (no state change), and the
-- run waited for the worker's fallback poll (about 1 resume in 25 took 500 ms more; `awooop
-- bench approvals`, docs/benchmarks.md).
--
-- So an update of a run that leaves it claimable announces it again. PostgreSQL delivers the
-- notification only after the updating transaction committed and released its locks, so the
-- claim it wakes can take the row. Payload-free like 0003's, so notifications of one
-- transaction fold into one.
CREATE TRIGGER runs_notify_relocked AFTER UPDATE ON runs
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'retrying') AND OLD.state IN ('queued', 'retrying'))
    EXECUTE FUNCTION awooop_runs_notify();
