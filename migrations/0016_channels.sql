-- Channel hub (operator/src/channels/): inbound conversation events, outbound delivery state
-- and its per-attempt audit, and progressive-feedback status messages.
--
-- Idempotency of inbound webhooks is decided here, by the unique index on the provider's
-- event id, not by a read-then-write in code: a platform retry (Telegram update_id, LINE
-- webhookEventId, Slack event_id), even delivered 20 times at once, inserts one row and so
-- starts one run.

CREATE TABLE conversation_events (
    project_id    text NOT NULL REFERENCES projects (project_id),
    event_id      uuid NOT NULL,
    channel       text NOT NULL CHECK (channel ~ '^[a-z][a-z0-9-]{0,62}$'),
    provider      text NOT NULL CHECK (provider IN ('telegram', 'line', 'slack', 'api')),
    external_id   text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 256),
    conversation  text NOT NULL CHECK (length(conversation) BETWEEN 1 AND 256),
    sender        text CHECK (length(sender) <= 256),
    kind          text NOT NULL CHECK (kind IN ('message', 'edited_message', 'command', 'postback', 'join', 'leave')),
    -- Normalized text, redacted by the audit redactor; never the raw body.
    text          text CHECK (length(text) <= 65536),
    body_sha256   text NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    -- LINE reply token (valid about a minute): the reply API is used while it is valid.
    reply_token   text CHECK (length(reply_token) <= 256),
    received_at   timestamptz NOT NULL DEFAULT now(),
    trace_id      text NOT NULL CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    run_id        uuid,
    -- Whether the hub forwarded the webhook to the channel's legacy handler (mirror mode).
    mirrored      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (project_id, event_id)
);
CREATE UNIQUE INDEX conversation_events_once ON conversation_events (project_id, channel, external_id);
CREATE INDEX conversation_events_by_run ON conversation_events (project_id, run_id) WHERE run_id IS NOT NULL;

-- One row per delivery attempt of an outbound message (append-only).
CREATE TABLE channel_deliveries (
    project_id          text NOT NULL REFERENCES projects (project_id),
    delivery_id         uuid NOT NULL,
    message_id          uuid NOT NULL,
    channel             text NOT NULL,
    attempt             integer NOT NULL CHECK (attempt >= 1),
    part                integer NOT NULL DEFAULT 0 CHECK (part >= 0),
    status              text NOT NULL CHECK (status IN ('sent', 'retry', 'failed', 'suppressed')),
    http_status         integer,
    provider_message_id text,
    latency_ms          integer NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    code                text,
    at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, delivery_id)
);
CREATE INDEX channel_deliveries_by_message ON channel_deliveries (project_id, message_id, at);

-- The status message of a long run started from a channel, edited in place.
CREATE TABLE channel_progress (
    project_id          text NOT NULL REFERENCES projects (project_id),
    run_id              uuid NOT NULL,
    channel             text NOT NULL,
    conversation        text NOT NULL,
    trace_id            text NOT NULL,
    interval_seconds    integer NOT NULL CHECK (interval_seconds BETWEEN 1 AND 3600),
    next_at             timestamptz NOT NULL,
    provider_message_id text,
    updates             integer NOT NULL DEFAULT 0,
    last_text           text,
    done                boolean NOT NULL DEFAULT false,
    PRIMARY KEY (project_id, run_id)
);
CREATE INDEX channel_progress_due ON channel_progress (next_at) WHERE NOT done;
-- A status message is a message to a user: shadow runs never get one (same guard as
-- outbound_messages, E-RUN-014).
CREATE TRIGGER channel_progress_shadow_guard BEFORE INSERT ON channel_progress
    FOR EACH ROW EXECUTE FUNCTION awooop_outbound_guard();

-- Outbound delivery state (the delivery worker claims with SKIP LOCKED, like runs).
ALTER TABLE outbound_messages
    ADD COLUMN attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN lease_until         timestamptz,
    ADD COLUMN parts_sent          integer NOT NULL DEFAULT 0 CHECK (parts_sent >= 0),
    ADD COLUMN provider_message_id text,
    ADD COLUMN error_code          text,
    ADD COLUMN sent_at             timestamptz;
CREATE INDEX outbound_pending ON outbound_messages (next_attempt_at) WHERE status = 'pending';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversation_events', 'channel_deliveries', 'channel_progress'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
    END LOOP;
END
$$;

-- The delivery worker finds due work across tenants (like run workers): in a transaction with
-- awooop.scope = 'delivery' only pending outbound messages and due progress rows answer, and
-- only their claim columns can change. Sending and its audit re-enter the tenant's own scope.
CREATE FUNCTION awooop_delivery_scope() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.scope', true), '') = 'delivery' $$;
CREATE POLICY delivery_scope ON outbound_messages
    USING (awooop_delivery_scope()) WITH CHECK (awooop_delivery_scope());
CREATE POLICY delivery_scope_read ON channel_progress FOR SELECT USING (awooop_delivery_scope());

GRANT SELECT, INSERT ON conversation_events TO awooop_app;
GRANT UPDATE (run_id, mirrored) ON conversation_events TO awooop_app;
GRANT SELECT, INSERT ON channel_deliveries TO awooop_app;
GRANT SELECT, INSERT ON channel_progress TO awooop_app;
GRANT UPDATE (next_at, provider_message_id, updates, last_text, done) ON channel_progress TO awooop_app;
GRANT UPDATE (attempts, next_attempt_at, lease_until, parts_sent, provider_message_id, error_code, sent_at)
    ON outbound_messages TO awooop_app;
