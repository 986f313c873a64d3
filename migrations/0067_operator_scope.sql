-- The operator's read scope (`awooop.scope = 'operator'`): one query for every project's
-- projection inputs, instead of one tenant transaction per project (docs/kubernetes.md, "How
-- the operator reconciles"; docs/security.md, "Operator scope").
--
-- What answers in this scope, and nothing else (read-only: every policy is FOR SELECT, so an
-- INSERT, UPDATE or DELETE in operator scope matches no policy and is refused):
--   * `projects`: active projects only (the operator removes the objects of any other);
--   * `project_migration_state`: the mode, which the projection copies into AgentProject;
--   * `active_revisions`: the two pointers the projection reads, the project contract named
--     after its project and the `default` MCP gateway contract; no agent, policy, runtime or
--     channel pointer;
--   * `contract_revisions`: only the revisions those two pointers name (what the operator
--     writes into the cluster anyway); no draft, no earlier or later revision, no signature.
-- Every other tenant table (API keys, audit, runs, approvals, drafts, ...) has no policy for
-- this scope and answers zero rows. A tenant transaction (`awooop.project_id` set, no scope)
-- is not widened by these policies; only the operator's fetch step opens an operator-scope
-- transaction (awooop_store::tenancy::operator_tx), as only workers open worker scope.
CREATE FUNCTION awooop_operator_scope() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('awooop.scope', true), '') = 'operator' $$;

-- The two contracts the projection is built from (crate awooop-k8s, controller::fetch).
CREATE FUNCTION awooop_operator_projected(p text, k text, n text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (k = 'project' AND n = p) OR (k = 'mcp_gateway' AND n = 'default') $$;

CREATE POLICY operator_read ON projects FOR SELECT
    USING (awooop_operator_scope() AND status = 'active');

CREATE POLICY operator_read ON project_migration_state FOR SELECT
    USING (awooop_operator_scope());

CREATE POLICY operator_read ON active_revisions FOR SELECT
    USING (awooop_operator_scope() AND awooop_operator_projected(project_id, kind, name));

-- The sub-select on active_revisions is itself under RLS: in operator scope it sees exactly
-- the pointers allowed above, so a revision answers only while it is one of them.
CREATE POLICY operator_read ON contract_revisions FOR SELECT
    USING (awooop_operator_scope() AND EXISTS (
        SELECT 1 FROM active_revisions a
        WHERE a.project_id = contract_revisions.project_id
          AND a.revision_id = contract_revisions.revision_id
          AND awooop_operator_projected(a.project_id, a.kind, a.name)));
