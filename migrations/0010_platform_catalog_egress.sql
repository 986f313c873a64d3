-- Issue 11 part A: no tenant-chosen code or destinations.
--
-- Platform tables (administrator-managed, shared by every tenant, reachable only in platform
-- scope, which writes a platform_audit row first). They name a project in a `project` column,
-- not `project_id`: they are not tenant rows and no tenant can read or write them.

-- The stdio catalog: the only programs the MCP gateway ever starts. A tenant's MCP Gateway
-- contract names an entry; it cannot supply a command, arguments or a path.
CREATE TABLE platform_stdio_catalog (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    command      text NOT NULL CHECK (length(command) BETWEEN 1 AND 4096),
    args         jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(args) = 'array'),
    -- Environment variable names a contract may inject credentials into.
    env_allow    text[] NOT NULL DEFAULT '{}',
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE platform_stdio_catalog IS 'awooop:platform';

-- One uid (and gid) per tenant for its stdio children: base + uid_offset. Allocated on the
-- first child a project starts; never reused.
CREATE TABLE platform_tenant_uids (
    project      text PRIMARY KEY CHECK (project ~ '^[a-z][a-z0-9-]{1,62}$'),
    uid_offset   bigint GENERATED ALWAYS AS IDENTITY (START WITH 1) UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE platform_tenant_uids IS 'awooop:platform';

-- Egress allow-list for MCP upstream URLs and model provider base URLs. `project` NULL: every
-- project. `host`: an exact DNS name, `*.suffix`, or an IP network in CIDR notation; loopback,
-- link-local, private and metadata addresses are reachable only through a CIDR rule.
CREATE TABLE platform_egress_rules (
    rule_id      uuid PRIMARY KEY,
    project      text CHECK (project ~ '^[a-z][a-z0-9-]{1,62}$'),
    host         text NOT NULL CHECK (length(host) BETWEEN 1 AND 253),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (project, host)
);
COMMENT ON TABLE platform_egress_rules IS 'awooop:platform';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['platform_stdio_catalog', 'platform_tenant_uids', 'platform_egress_rules'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY platform_scope ON %I USING (awooop_platform_scope()) '
            'WITH CHECK (awooop_platform_scope())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON platform_stdio_catalog TO awooop_app;
GRANT SELECT, INSERT ON platform_tenant_uids TO awooop_app;
GRANT SELECT, INSERT, DELETE ON platform_egress_rules TO awooop_app;
GRANT UPDATE (note) ON platform_egress_rules TO awooop_app;
