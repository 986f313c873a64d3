-- Cheaper CHECK constraints on the tables every inbound event and every run writes, and one
-- index fewer on `runs` (issue 16 "Benchmark", issue 18 "Runs"). Nothing a constraint admits
-- or refuses changes.
--
-- Why: a profile of the channel hub's group commit (docs/benchmarks.md, "channels (session 6)")
-- spent about 30 % of PostgreSQL's CPU in `textregexeq` under ExecConstraints. PostgreSQL's
-- regex engine expands a bounded repetition into one state per count, so `^[0-9a-f]{64}$`
-- costs ~12 µs per row and `^[A-Za-z0-9._:-]{1,128}$` ~17 µs, against ~0.5 µs for the same
-- character class unbounded (`+`/`*`) with the count checked by length(). Per event the hub
-- evaluated eight such patterns (conversation_events: channel, body hash, trace id; runs:
-- agent, input hash, trace id, span id; idempotency_keys: key).
--
-- Equivalence, pattern by pattern: `^C{n}$` holds exactly when the string is non-empty, every
-- character is in C, and it has n characters, i.e. `^C+$ AND length(x) = n`; `^C{1,n}$` is
-- `^C+$ AND length(x) <= n`; `^[a-z]C{0,n}$` is `^[a-z]C*$ AND length(x) <= n + 1`. A NULL
-- value passes both forms (NULL AND NULL is NULL, which a CHECK admits). Every character class
-- here is ASCII, so length() (characters) equals the byte count the old patterns bounded.
-- The constraint names stay, so error messages and anything matching on them are unchanged.
-- tests/integration/runtime.rs (hot_path_checks_refuse_what_they_refused) pins the boundary
-- cases: each length off by one, an upper-case or non-hex character, a trailing newline, the
-- empty string.
--
-- Adding a CHECK validates the existing rows (one scan of each table inside this migration);
-- they satisfy the new form because they satisfied the equivalent old one.

ALTER TABLE runs
    DROP CONSTRAINT runs_agent_check,
    DROP CONSTRAINT runs_input_hash_check,
    DROP CONSTRAINT runs_trace_id_check,
    DROP CONSTRAINT runs_span_id_check,
    ADD CONSTRAINT runs_agent_check CHECK (agent ~ '^[a-z][a-z0-9-]*$' AND length(agent) <= 63),
    ADD CONSTRAINT runs_input_hash_check
        CHECK (input_hash ~ '^sha256:[0-9a-f]+$' AND length(input_hash) = 71),
    ADD CONSTRAINT runs_trace_id_check CHECK (trace_id ~ '^[0-9a-f]+$' AND length(trace_id) = 32),
    ADD CONSTRAINT runs_span_id_check CHECK (span_id ~ '^[0-9a-f]+$' AND length(span_id) = 16);

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check,
    ADD CONSTRAINT idempotency_keys_key_check CHECK (key ~ '^[A-Za-z0-9._:-]+$' AND length(key) <= 128);

ALTER TABLE conversation_events
    DROP CONSTRAINT conversation_events_body_sha256_check,
    DROP CONSTRAINT conversation_events_channel_check,
    DROP CONSTRAINT conversation_events_trace_id_check,
    ADD CONSTRAINT conversation_events_body_sha256_check
        CHECK (body_sha256 ~ '^[0-9a-f]+$' AND length(body_sha256) = 64),
    ADD CONSTRAINT conversation_events_channel_check
        CHECK (channel ~ '^[a-z][a-z0-9-]*$' AND length(channel) <= 63),
    ADD CONSTRAINT conversation_events_trace_id_check
        CHECK (trace_id ~ '^[0-9a-f]+$' AND length(trace_id) = 32);

-- Replies: one outbound row per answered run.
ALTER TABLE outbound_messages
    DROP CONSTRAINT outbound_messages_channel_check,
    ADD CONSTRAINT outbound_messages_channel_check
        CHECK (channel ~ '^[a-z][a-z0-9-]*$' AND length(channel) <= 63);

-- runs_claimable (0003) indexed the queue by run_after for a claim that has ordered by
-- created_at since 0020 (runs_claimable_fifo serves it); no statement orders or ranges by
-- run_after alone any more (the claim only filters on it). Every queued or retrying run paid
-- for its entry on insert and on each requeue.
DROP INDEX runs_claimable;
