-- AwoooP control plane, part 1: roles, tenancy primitives and the contract lifecycle.
--
-- Conventions (docs/architecture.md, "Tenancy"):
--   * a TENANT table has `project_id text NOT NULL`, ENABLE + FORCE ROW LEVEL SECURITY and a
--     policy keyed on the transaction-local setting `awooop.project_id`;
--   * a PLATFORM table has no project_id, carries the comment 'awooop:platform', and is visible
--     only inside a platform-scoped transaction (`awooop.scope = 'platform'`), which the Rust
--     helper audits;
--   * append-only tables give the runtime role INSERT and SELECT only; published contract
--     material is additionally protected by triggers that reject UPDATE/DELETE/TRUNCATE for
--     every role, the owner included.

-- The runtime role. It owns nothing, cannot bypass RLS and gets explicit grants per table.
-- CREATE ROLE is cluster-wide: concurrent migrations of several databases (tests) may race,
-- hence the exception handler.
DO $$
BEGIN
    CREATE ROLE awooop_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The migrating owner must be able to `SET ROLE awooop_app` (the runtime pool does that on
-- every connection when no separate runtime URL is configured).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'awooop_app', 'MEMBER') THEN
        EXECUTE format('GRANT awooop_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege OR unique_violation THEN
    RAISE NOTICE 'could not grant awooop_app to %: grant it by hand', current_user;
END
$$;

GRANT USAGE ON SCHEMA public TO awooop_app;

-- The tenant of the current transaction, NULL when unset. `current_setting(.., true)` returns
-- NULL when the setting never existed and '' after a transaction that set it locally ended,
-- so both are normalised to NULL: a comparison with NULL is never true, which is what makes a
-- session without tenant context see zero rows and fail every write.
CREATE FUNCTION awooop_current_project() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('awooop.project_id', true), '') $$;

CREATE FUNCTION awooop_platform_scope() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.scope', true), '') = 'platform' $$;

-- Raised by every append-only / immutable table. SQLSTATE AW001 is mapped to
-- E-CONTRACT-007 by the Rust error layer.
CREATE FUNCTION awooop_reject_mutation() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'E-CONTRACT-007: rows of % are immutable (% rejected)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'AW001';
END
$$;

-- ---------------------------------------------------------------------------------------
-- Projects (tenants). The row of a project is itself tenant data: a tenant session sees its
-- own row; creating and listing projects happens in platform scope.
CREATE TABLE projects (
    project_id            text PRIMARY KEY CHECK (project_id ~ '^[a-z][a-z0-9-]{1,62}$'),
    display_name          text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'retired')),
    required_approvals    integer NOT NULL DEFAULT 2 CHECK (required_approvals BETWEEN 1 AND 10),
    approval_ttl_seconds  integer NOT NULL DEFAULT 86400 CHECK (approval_ttl_seconds BETWEEN 60 AND 2592000),
    allow_destructive     boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Per-project API keys. Only a SHA-256 of the random secret is stored; the secret is shown
-- once at creation. 256-bit random secrets make a slow KDF unnecessary.
CREATE TABLE api_keys (
    project_id   text NOT NULL REFERENCES projects (project_id),
    key_id       text NOT NULL CHECK (key_id ~ '^[a-z0-9]{16}$'),
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    principal    text NOT NULL CHECK (principal ~ '^[A-Za-z0-9._@-]{1,128}$'),
    roles        text[] NOT NULL CHECK (roles <@ ARRAY['reader', 'author', 'publisher', 'approver', 'activator', 'runner']::text[]),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (project_id, key_id)
);

-- Publisher signing keys: id and SHA-256 fingerprint only. The HMAC key material lives in the
-- keyring (a mounted Secret or a local file), never in the database.
CREATE TABLE signing_keys (
    project_id   text NOT NULL REFERENCES projects (project_id),
    key_id       text NOT NULL CHECK (key_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    fingerprint  text NOT NULL CHECK (fingerprint ~ '^sha256:[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (project_id, key_id)
);

-- Content-addressed artifacts (prompts, JSON Schemas, evals, replays) referenced by contracts
-- as ref + sha256. When content is stored inline PostgreSQL checks the hash itself.
CREATE TABLE artifact_refs (
    project_id    text NOT NULL REFERENCES projects (project_id),
    artifact_ref  text NOT NULL CHECK (length(artifact_ref) BETWEEN 1 AND 512),
    sha256        text NOT NULL CHECK (sha256 ~ '^sha256:[0-9a-f]{64}$'),
    artifact_kind text NOT NULL CHECK (artifact_kind IN ('prompt', 'schema', 'eval', 'replay', 'other')),
    media_type    text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    content       bytea,
    uri           text,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, artifact_ref, sha256),
    CHECK (content IS NULL OR 'sha256:' || encode(sha256(content), 'hex') = sha256),
    CHECK (content IS NULL OR length(content) = size_bytes),
    CHECK (content IS NOT NULL OR uri IS NOT NULL)
);

-- Mutable drafts: visible to control-plane reads only. Runtime-facing reads go through
-- active_revisions and never touch this table.
CREATE TABLE contract_drafts (
    project_id  text NOT NULL REFERENCES projects (project_id),
    draft_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('project', 'agent', 'mcp_gateway', 'policy', 'runtime', 'channel')),
    name        text NOT NULL CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    body        jsonb NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, draft_id)
);
CREATE INDEX contract_drafts_name ON contract_drafts (project_id, kind, name);

-- Published revisions: append-only and immutable. The canonical (RFC 8785) text is what was
-- hashed; PostgreSQL re-checks the hash so a row can never disagree with its body_hash.
CREATE TABLE contract_revisions (
    project_id      text NOT NULL REFERENCES projects (project_id),
    revision_id     uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('project', 'agent', 'mcp_gateway', 'policy', 'runtime', 'channel')),
    name            text NOT NULL CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    revision        integer NOT NULL CHECK (revision >= 1),
    body_canonical  text NOT NULL,
    body            jsonb GENERATED ALWAYS AS (body_canonical::jsonb) STORED,
    body_hash       text NOT NULL CHECK (body_hash = 'sha256:' || encode(sha256(convert_to(body_canonical, 'UTF8')), 'hex')),
    published_by    text NOT NULL,
    published_at    timestamptz NOT NULL DEFAULT now(),
    source_draft_id uuid,
    PRIMARY KEY (project_id, revision_id),
    UNIQUE (project_id, kind, name, revision),
    -- target of the composite foreign key from active_revisions: a pointer can only name a
    -- (kind, name, revision, hash) combination that really exists.
    UNIQUE (project_id, revision_id, kind, name, revision, body_hash)
);
CREATE TRIGGER contract_revisions_immutable BEFORE UPDATE OR DELETE ON contract_revisions
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();
CREATE TRIGGER contract_revisions_no_truncate BEFORE TRUNCATE ON contract_revisions
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_reject_mutation();

-- The publisher's signature over (project, kind, name, revision, body_hash). A signature is
-- accepted at most once per project (replay protection).
CREATE TABLE publish_signatures (
    project_id   text NOT NULL,
    revision_id  uuid NOT NULL,
    key_id       text NOT NULL,
    algorithm    text NOT NULL DEFAULT 'hmac-sha256' CHECK (algorithm = 'hmac-sha256'),
    signature    text NOT NULL CHECK (signature ~ '^[0-9a-f]{64}$'),
    verified_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, revision_id),
    UNIQUE (project_id, signature),
    FOREIGN KEY (project_id, revision_id) REFERENCES contract_revisions (project_id, revision_id),
    FOREIGN KEY (project_id, key_id) REFERENCES signing_keys (project_id, key_id)
);
CREATE TRIGGER publish_signatures_immutable BEFORE UPDATE OR DELETE ON publish_signatures
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();
CREATE TRIGGER publish_signatures_no_truncate BEFORE TRUNCATE ON publish_signatures
    FOR EACH STATEMENT EXECUTE FUNCTION awooop_reject_mutation();

-- Activation approvals. An approval is open until an activation consumes it or it is voided
-- (expired); at most one open approval per approver and revision, so a duplicate approver can
-- never be counted twice whatever Redis says.
CREATE TABLE activation_approvals (
    project_id   text NOT NULL,
    approval_id  uuid NOT NULL,
    revision_id  uuid NOT NULL,
    approver     text NOT NULL CHECK (approver ~ '^[A-Za-z0-9._@-]{1,128}$'),
    approved_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    consumed_by  uuid,
    void_reason  text CHECK (void_reason IN ('expired')),
    PRIMARY KEY (project_id, approval_id),
    FOREIGN KEY (project_id, revision_id) REFERENCES contract_revisions (project_id, revision_id),
    CHECK (expires_at > approved_at)
);
CREATE UNIQUE INDEX activation_approvals_open ON activation_approvals (project_id, revision_id, approver)
    WHERE consumed_by IS NULL AND void_reason IS NULL;

-- The active pointer: exactly one per (project, kind, name) by the primary key.
CREATE TABLE active_revisions (
    project_id     text NOT NULL,
    kind           text NOT NULL,
    name           text NOT NULL,
    revision_id    uuid NOT NULL,
    revision       integer NOT NULL,
    body_hash      text NOT NULL,
    activation_id  uuid NOT NULL,
    activated_by   text NOT NULL,
    activated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, kind, name),
    FOREIGN KEY (project_id, revision_id, kind, name, revision, body_hash)
        REFERENCES contract_revisions (project_id, revision_id, kind, name, revision, body_hash)
);

CREATE TABLE activation_history (
    project_id            text NOT NULL,
    activation_id         uuid NOT NULL,
    kind                  text NOT NULL,
    name                  text NOT NULL,
    revision_id           uuid NOT NULL,
    revision              integer NOT NULL,
    body_hash             text NOT NULL,
    previous_revision_id  uuid,
    is_rollback           boolean NOT NULL,
    approvers             text[] NOT NULL,
    activated_by          text NOT NULL,
    activated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, activation_id),
    FOREIGN KEY (project_id, revision_id) REFERENCES contract_revisions (project_id, revision_id)
);
CREATE INDEX activation_history_name ON activation_history (project_id, kind, name, activated_at DESC);
CREATE TRIGGER activation_history_immutable BEFORE UPDATE OR DELETE ON activation_history
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();

-- Strangler-fig migration state of each project, one step at a time, with history.
CREATE TABLE project_migration_state (
    project_id  text PRIMARY KEY REFERENCES projects (project_id),
    mode        text NOT NULL CHECK (mode IN ('shadow', 'canary', 'read_only', 'suggest', 'auto_remediate')),
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_migration_history (
    project_id  text NOT NULL REFERENCES projects (project_id),
    change_id   uuid NOT NULL,
    from_mode   text CHECK (from_mode IN ('shadow', 'canary', 'read_only', 'suggest', 'auto_remediate')),
    to_mode     text NOT NULL CHECK (to_mode IN ('shadow', 'canary', 'read_only', 'suggest', 'auto_remediate')),
    forced      boolean NOT NULL,
    reason      text,
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, change_id),
    CHECK (NOT forced OR length(coalesce(reason, '')) > 0)
);
CREATE TRIGGER project_migration_history_immutable BEFORE UPDATE OR DELETE ON project_migration_history
    FOR EACH ROW EXECUTE FUNCTION awooop_reject_mutation();

-- Tenant audit log: append-only for the runtime role (INSERT, SELECT). Records are redacted
-- before they are written (audit::redact).
CREATE TABLE audit_log (
    project_id  text NOT NULL,
    audit_id    uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
    code        text,
    trace_id    text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (project_id, audit_id)
);
CREATE INDEX audit_log_at ON audit_log (project_id, at DESC);

-- ---------------------------------------------------------------------------------------
-- Platform tables: shared across tenants, reachable only in platform scope (audited).
CREATE TABLE platform_resources (
    resource_kind  text NOT NULL CHECK (resource_kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    resource_key   text NOT NULL CHECK (length(resource_key) BETWEEN 1 AND 256),
    value          jsonb NOT NULL,
    updated_by     text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_kind, resource_key)
);
COMMENT ON TABLE platform_resources IS 'awooop:platform';

CREATE TABLE platform_audit (
    audit_id  uuid PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    reason    text,
    details   jsonb NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE platform_audit IS 'awooop:platform';
CREATE INDEX platform_audit_at ON platform_audit (at DESC);

-- ---------------------------------------------------------------------------------------
-- Row-level security. Tenant tables: the transaction's project only. `projects` also
-- answers in platform scope (creating and listing tenants).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'projects', 'api_keys', 'signing_keys', 'artifact_refs', 'contract_drafts',
        'contract_revisions', 'publish_signatures', 'activation_approvals', 'active_revisions',
        'activation_history', 'project_migration_state', 'project_migration_history', 'audit_log'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['platform_resources', 'platform_audit'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY platform_scope ON %I USING (awooop_platform_scope()) '
            'WITH CHECK (awooop_platform_scope())', t);
    END LOOP;
END
$$;
CREATE POLICY platform_scope ON projects USING (awooop_platform_scope()) WITH CHECK (awooop_platform_scope());

-- Grants: only what the runtime needs; append-only tables get no UPDATE or DELETE.
GRANT SELECT, INSERT ON projects TO awooop_app;
GRANT UPDATE (display_name, status, required_approvals, approval_ttl_seconds, allow_destructive, updated_at) ON projects TO awooop_app;
GRANT SELECT, INSERT ON api_keys TO awooop_app;
GRANT UPDATE (revoked_at) ON api_keys TO awooop_app;
GRANT SELECT, INSERT ON signing_keys TO awooop_app;
GRANT UPDATE (revoked_at) ON signing_keys TO awooop_app;
GRANT SELECT, INSERT ON artifact_refs TO awooop_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON contract_drafts TO awooop_app;
GRANT SELECT, INSERT ON contract_revisions TO awooop_app;
GRANT SELECT, INSERT ON publish_signatures TO awooop_app;
GRANT SELECT, INSERT ON activation_approvals TO awooop_app;
GRANT UPDATE (consumed_by, void_reason) ON activation_approvals TO awooop_app;
GRANT SELECT, INSERT, UPDATE ON active_revisions TO awooop_app;
GRANT SELECT, INSERT ON activation_history TO awooop_app;
GRANT SELECT, INSERT, UPDATE ON project_migration_state TO awooop_app;
GRANT SELECT, INSERT ON project_migration_history TO awooop_app;
GRANT SELECT, INSERT ON audit_log TO awooop_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform_resources TO awooop_app;
GRANT SELECT, INSERT ON platform_audit TO awooop_app;
