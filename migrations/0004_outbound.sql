-- Outbound messages: what the platform sends to users (channel replies, progress updates).
-- Shadow runs must never produce one. The rule is enforced here, where messages leave the
-- platform, not by convention in callers: an insert for a run in shadow mode is rejected.

CREATE TABLE outbound_messages (
    project_id    text NOT NULL REFERENCES projects (project_id),
    message_id    uuid NOT NULL,
    run_id        uuid NOT NULL,
    channel       text NOT NULL CHECK (channel ~ '^[a-z][a-z0-9-]{0,62}$'),
    conversation  text NOT NULL CHECK (length(conversation) BETWEEN 1 AND 256),
    kind          text NOT NULL CHECK (kind IN ('reply', 'progress')),
    body          jsonb NOT NULL,
    trace_id      text NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, message_id),
    FOREIGN KEY (project_id, run_id) REFERENCES runs (project_id, run_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX outbound_reply_once ON outbound_messages (project_id, run_id) WHERE kind = 'reply';

CREATE FUNCTION awooop_outbound_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    run_mode text;
    project_mode text;
BEGIN
    -- Rows outside the caller's tenant are left to row-level security to refuse.
    IF NEW.project_id IS DISTINCT FROM awooop_current_project() THEN
        RETURN NEW;
    END IF;
    SELECT mode INTO run_mode FROM runs WHERE project_id = NEW.project_id AND run_id = NEW.run_id;
    SELECT mode INTO project_mode FROM project_migration_state WHERE project_id = NEW.project_id;
    IF run_mode IS NULL OR run_mode = 'shadow' OR coalesce(project_mode, 'shadow') = 'shadow' THEN
        RAISE EXCEPTION 'E-RUN-014: shadow runs never send outbound messages'
            USING ERRCODE = 'AW003';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER outbound_messages_shadow_guard BEFORE INSERT ON outbound_messages
    FOR EACH ROW EXECUTE FUNCTION awooop_outbound_guard();

ALTER TABLE outbound_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbound_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbound_messages
    USING (project_id = awooop_current_project()) WITH CHECK (project_id = awooop_current_project());
GRANT SELECT, INSERT ON outbound_messages TO awooop_app;
GRANT UPDATE (status) ON outbound_messages TO awooop_app;

-- Where a run's reply goes (set by the caller, e.g. a channel adapter).
ALTER TABLE runs ADD COLUMN reply_to jsonb;
