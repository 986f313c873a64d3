-- Revoking (or otherwise changing) an API key notifies `awooop_activation` (issue 18).
--
-- Why: the gateway caches the verdict of each API key presented on /mcp (one verification
-- transaction per key and TTL instead of one per call). Its TTL was 1 s so that a revocation
-- took effect within a second, and every call of a runner calling less than once a second paid
-- the verification. With the revocation notified, the verdicts are dropped at once (and the
-- revocation takes effect at once instead of within the TTL), so they share the snapshots'
-- long TTL (see 0078 for why that is safe: caches drop everything whenever their listener was
-- not listening).
--
-- How: a row trigger on any change of a key and on its deletion (the platform only ever sets
-- revoked_at; an operator's psql session might change a key's roles or bindings, or delete
-- it), in the changing transaction,
-- delivered on commit, payload `project_id` as every listener reads it; the key id is not
-- secret (it is the middle part of the key and the audit's target). The operator also follows
-- the channel: a revocation costs it one reconcile of the project that finds nothing to do.

CREATE FUNCTION awooop_api_key_changed_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('awooop_activation',
        json_build_object('project_id', OLD.project_id, 'kind', 'api_key_changed',
            'key_id', OLD.key_id)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed_notify AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION awooop_api_key_changed_notify();

CREATE TRIGGER api_keys_deleted_notify AFTER DELETE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION awooop_api_key_changed_notify();
