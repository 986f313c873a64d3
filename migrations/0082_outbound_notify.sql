-- New outbound messages wake the delivery workers (channels::delivery), which listen on
-- `awooop_outbound` instead of polling every 500 ms.
--
-- Why: an idle delivery worker ran three transactions every 500 ms whatever was queued (claim,
-- due progress rows, queue depth), in every worker process: with one worker pod per project the
-- database paid that for every tenant, busy or not, and a reply waited for the next poll, 250 ms
-- on average (docs/benchmarks.md, "Session 30"). Now a worker waits for a notice, or for the
-- moment the next retry, lease expiry or progress update falls due, which it reads in its pass.
--
-- One payload-free NOTIFY per inserting statement (the notices of a transaction fold into one).
-- The messages are written by a run's completion (its reply) and by an approval request's
-- notice: transactions that already notify (their run events), so this adds no commit to the
-- ones NOTIFY serialises (migration 0071). Progress rows are written by the channel hub's group
-- commit, which keeps NOTIFY out of its transaction: its writer announces them after the commit
-- (awooop_store::notify::Notifier::outbound). Notices stay wake-ups: a lost one delays a
-- message by at most the worker's idle bound (10 s by default), never loses it.
CREATE FUNCTION awooop_outbound_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('awooop_outbound', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbound_messages_notify AFTER INSERT ON outbound_messages
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_outbound_notify();
