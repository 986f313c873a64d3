-- MCP gateway: the registry projected from the active MCP Gateway contract, approval-token
-- replay protection and the audit of every tool call.
--
-- The registry tables (mcp_tools, mcp_grants, mcp_credential_refs) are written in the same
-- transaction that activates an MCP Gateway revision, keyed by that revision, so SQL (and the
-- operator) can answer "which tools may agent X call" without parsing contract bodies. The
-- gateway's hot path uses the same active revision, compiled once and cached by revision id.
-- Credential refs hold references only (a Secret name/key, a variable name, a path), never a
-- value.

CREATE TABLE mcp_tools (
    project_id          text NOT NULL REFERENCES projects (project_id),
    revision_id         uuid NOT NULL,
    exposed_name        text NOT NULL CHECK (exposed_name ~ '^[a-z][a-z0-9-]{0,62}__[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    provider            text NOT NULL,
    upstream_name       text NOT NULL,
    risk                text NOT NULL CHECK (risk IN ('read_only', 'write', 'execute', 'destructive')),
    environments        text[] NOT NULL,
    requires_approval   boolean NOT NULL,
    enabled             boolean NOT NULL,
    max_result_chars    integer NOT NULL CHECK (max_result_chars BETWEEN 256 AND 1048576),
    input_schema        jsonb NOT NULL,
    PRIMARY KEY (project_id, revision_id, exposed_name),
    FOREIGN KEY (project_id, revision_id) REFERENCES contract_revisions (project_id, revision_id)
);

CREATE TABLE mcp_grants (
    project_id    text NOT NULL REFERENCES projects (project_id),
    revision_id   uuid NOT NULL,
    agent         text NOT NULL CHECK (agent ~ '^[a-z][a-z0-9-]{0,62}$'),
    exposed_name  text NOT NULL,
    environments  text[] NOT NULL,
    PRIMARY KEY (project_id, revision_id, agent, exposed_name),
    FOREIGN KEY (project_id, revision_id, exposed_name) REFERENCES mcp_tools (project_id, revision_id, exposed_name)
);

CREATE TABLE mcp_credential_refs (
    project_id    text NOT NULL REFERENCES projects (project_id),
    revision_id   uuid NOT NULL,
    name          text NOT NULL CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    source_kind   text NOT NULL CHECK (source_kind IN ('kubernetes_secret', 'env', 'file')),
    -- the reference (Secret name and key, variable name or path), never a value
    source        jsonb NOT NULL,
    PRIMARY KEY (project_id, revision_id, name),
    FOREIGN KEY (project_id, revision_id) REFERENCES contract_revisions (project_id, revision_id)
);

-- Every registry projection is immutable once written (it mirrors an immutable revision).
CREATE TRIGGER mcp_tools_immutable BEFORE UPDATE OR DELETE ON mcp_tools
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();
CREATE TRIGGER mcp_grants_immutable BEFORE UPDATE OR DELETE ON mcp_grants
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();
CREATE TRIGGER mcp_credential_refs_immutable BEFORE UPDATE OR DELETE ON mcp_credential_refs
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();

-- Approval-token replay protection: a jti is accepted at most once per project, whatever Redis
-- remembers (Redis SET NX only answers the common case fast).
CREATE TABLE mcp_approval_uses (
    project_id  text NOT NULL REFERENCES projects (project_id),
    jti         text NOT NULL CHECK (length(jti) BETWEEN 8 AND 128),
    run_id      uuid,
    tool        text NOT NULL,
    approver    text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, jti)
);
CREATE TRIGGER mcp_approval_uses_immutable BEFORE UPDATE OR DELETE ON mcp_approval_uses
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();

-- One row per tool call (allowed or denied). Never holds a credential value or a result body:
-- only the credential ref names, sizes, status and timing. Written in batches off the request
-- path; append-only for the runtime role.
CREATE TABLE mcp_call_audit (
    project_id       text NOT NULL REFERENCES projects (project_id),
    call_id          uuid NOT NULL,
    at               timestamptz NOT NULL,
    trace_id         text NOT NULL,
    run_id           uuid,
    agent            text NOT NULL,
    tool             text NOT NULL,
    environment      text NOT NULL,
    mode             text NOT NULL,
    credential_refs  text[] NOT NULL DEFAULT '{}',
    decision         text NOT NULL CHECK (decision IN ('allowed', 'denied')),
    code             text,
    result_status    text NOT NULL CHECK (result_status IN ('ok', 'tool_error', 'upstream_error', 'denied')),
    latency_us       bigint NOT NULL CHECK (latency_us >= 0),
    bytes_in         bigint NOT NULL CHECK (bytes_in >= 0),
    bytes_out        bigint NOT NULL CHECK (bytes_out >= 0),
    truncated        boolean NOT NULL DEFAULT false,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (project_id, call_id)
);
CREATE INDEX mcp_call_audit_at ON mcp_call_audit (project_id, at DESC);
CREATE INDEX mcp_call_audit_trace ON mcp_call_audit (project_id, trace_id);
CREATE TRIGGER mcp_call_audit_immutable BEFORE UPDATE OR DELETE ON mcp_call_audit
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'mcp_tools', 'mcp_grants', 'mcp_credential_refs', 'mcp_approval_uses', 'mcp_call_audit'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
        EXECUTE format('GRANT SELECT, INSERT ON %I TO awooop_app', t);
    END LOOP;
END
$$;
