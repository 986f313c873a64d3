-- Approvals and controlled write paths (issue 12): approval requests with M-of-N decisions,
-- tool-call intents in the journal, approval buttons in chat, recovered runs at the front of
-- the queue, and the idempotency key an approval token's single use is bound to.
--
-- docs/approvals.md describes the flow; awooop-runtime (`approvals.rs`) owns these tables.

-- One row per tool call that waits for people: the pending call as journaled (tool, canonical
-- arguments and their SHA-256, a redacted preview, why, dry-run evidence and rollback plan),
-- the quorum and the eligible approvers from the active Project contract, and its state.
-- `kind = 'proposal'` is the suggest-mode form of the same thing (docs/approvals.md).
CREATE TABLE approval_requests (
    project_id          text NOT NULL REFERENCES projects (project_id),
    request_id          uuid NOT NULL,
    run_id              uuid NOT NULL,
    step_index          integer NOT NULL CHECK (step_index >= 0),
    kind                text NOT NULL CHECK (kind IN ('approval', 'proposal')),
    agent               text NOT NULL,
    tool                text NOT NULL,
    -- The exact arguments the approved call will carry (the token binds their hash).
    arguments           jsonb NOT NULL,
    args_sha256         text NOT NULL CHECK (args_sha256 ~ '^sha256:[0-9a-f]{64}$'),
    -- What people see: arguments passed through the redactor.
    preview             jsonb NOT NULL,
    reason              text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    -- {rationale, dry_run: {tool, result_sha256, result}, rollback: {tool}} when declared.
    evidence            jsonb,
    required_approvals  integer NOT NULL CHECK (required_approvals BETWEEN 1 AND 10),
    -- Eligible principals (acl.approvers); empty: any key with the approver role.
    approvers           text[] NOT NULL,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    -- The approval token minted at quorum: read by the worker that resumes the run, never
    -- served by the API.
    token               text,
    decided_by          text[] NOT NULL DEFAULT '{}',
    decision_comment    text,
    trace_id            text NOT NULL CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    reply_to            jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    decided_at          timestamptz,
    PRIMARY KEY (project_id, request_id),
    UNIQUE (project_id, run_id, step_index),
    FOREIGN KEY (project_id, run_id) REFERENCES runs (project_id, run_id) ON DELETE CASCADE,
    CHECK ((state = 'approved') = (token IS NOT NULL))
);
CREATE INDEX approval_requests_pending ON approval_requests (expires_at) WHERE state = 'pending';
CREATE INDEX approval_requests_by_created ON approval_requests (project_id, created_at DESC);

-- Once decided, a request never changes again (late clicks change nothing).
CREATE FUNCTION awooop_approval_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'E-APPROVAL-004: approval request already decided'
            USING ERRCODE = 'AW004';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER approval_requests_once BEFORE UPDATE ON approval_requests
    FOR EACH ROW EXECUTE FUNCTION awooop_approval_transition();

-- One decision per approver and request: the same approver counts once.
CREATE TABLE approval_decisions (
    project_id   text NOT NULL,
    request_id   uuid NOT NULL,
    approver     text NOT NULL CHECK (approver ~ '^[A-Za-z0-9._@-]{1,128}$'),
    decision     text NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment      text CHECK (length(comment) <= 2000),
    via          text NOT NULL CHECK (via ~ '^[a-z][a-z0-9_:-]{0,63}$'),
    trace_id     text NOT NULL,
    decided_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, request_id, approver),
    FOREIGN KEY (project_id, request_id) REFERENCES approval_requests (project_id, request_id) ON DELETE CASCADE
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['approval_requests', 'approval_decisions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
    END LOOP;
END
$$;
-- The reaper expires pending requests of every project (worker scope, like `runs`).
CREATE POLICY worker_scope ON approval_requests USING (awooop_worker_scope()) WITH CHECK (awooop_worker_scope());

GRANT SELECT, INSERT ON approval_requests TO awooop_app;
GRANT UPDATE (state, token, decided_by, decision_comment, decided_at) ON approval_requests TO awooop_app;
GRANT DELETE ON approval_requests TO awooop_app;     -- cascades from run retention
GRANT SELECT, INSERT ON approval_decisions TO awooop_app;
GRANT DELETE ON approval_decisions TO awooop_app;    -- cascades from run retention

-- The journal records a tool call's intent (with its idempotency key) before the call, so a
-- resumed attempt knows which call is in doubt and re-sends it with the same key.
ALTER TABLE run_steps DROP CONSTRAINT run_steps_status_check;
ALTER TABLE run_steps ADD CONSTRAINT run_steps_status_check
    CHECK (status IN ('succeeded', 'failed', 'waiting', 'intent'));

-- Approval requests and decisions reach the chat that started the run (buttons).
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_kind_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_kind_check
    CHECK (kind IN ('reply', 'progress', 'approval'));

-- An approval token is spent once, by one tool-call intent: a re-send of the same intent (same
-- idempotency key, after a crash) is not a replay.
ALTER TABLE mcp_approval_uses ADD COLUMN idempotency_key text;

-- Recovered and approved runs keep their place: claims go oldest run first among the runnable
-- ones (run_after only says when a run may be claimed again), so a run whose lease expired is
-- not queued behind the work that arrived meanwhile.
CREATE INDEX runs_claimable_fifo ON runs (created_at) WHERE state IN ('queued', 'retrying');

-- Dry-run evidence: the successful dry run of a write tool, per run and argument hash; the
-- gateway refuses the real call without it (E-MCP-GATE-011). The result is the sanitized tool
-- result (redacted, truncated), addressed by its SHA-256.
CREATE TABLE tool_evidence (
    project_id     text NOT NULL,
    run_id         uuid NOT NULL,
    tool           text NOT NULL,
    args_sha256    text NOT NULL CHECK (args_sha256 ~ '^sha256:[0-9a-f]{64}$'),
    dry_run_tool   text NOT NULL,
    result_sha256  text NOT NULL CHECK (result_sha256 ~ '^sha256:[0-9a-f]{64}$'),
    result         jsonb NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, run_id, tool, args_sha256),
    FOREIGN KEY (project_id, run_id) REFERENCES runs (project_id, run_id) ON DELETE CASCADE
);
ALTER TABLE tool_evidence ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_evidence FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_evidence
    USING (project_id = awooop_current_project()) WITH CHECK (project_id = awooop_current_project());
GRANT SELECT, INSERT, DELETE ON tool_evidence TO awooop_app;
GRANT UPDATE (dry_run_tool, result_sha256, result, recorded_at) ON tool_evidence TO awooop_app;
