-- AwoooP model path: the token/currency budget ledger, its reservations, the project and
-- provider breakers and the anomaly counter's PostgreSQL fallback (model::budget,
-- model::breaker, model::anomaly).
--
-- The ledger is the authority (Redis never is). One row per (project, scope, period):
-- scope 'project' or 'agent:<name>'. A model call first reserves its worst case
-- (prompt bound + max output tokens) with a conditional UPDATE that only succeeds while
-- spent + reserved + wanted <= limit: concurrent callers serialise on the row lock, so the
-- sum of admitted reservations can never pass the limit. Settlement replaces the reservation
-- by the actual usage; reservations carry an expiry so none is left reserved forever.

CREATE TABLE budget_ledger (
    project_id            text NOT NULL REFERENCES projects (project_id),
    scope                 text NOT NULL CHECK (scope ~ '^(project|agent:[a-z][a-z0-9-]{0,62})$'),
    period_start          timestamptz NOT NULL,
    period                text NOT NULL CHECK (period IN ('day', 'month')),
    token_limit           bigint NOT NULL CHECK (token_limit >= 0),
    currency_limit_micros bigint CHECK (currency_limit_micros >= 0),
    reserved_tokens       bigint NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    spent_tokens          bigint NOT NULL DEFAULT 0 CHECK (spent_tokens >= 0),
    reserved_micros       bigint NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    spent_micros          bigint NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    -- Set when settlement reaches the hard limit: the project breaker for this period.
    tripped_at            timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, scope, period_start)
);

CREATE TABLE budget_reservations (
    project_id      text NOT NULL REFERENCES projects (project_id),
    reservation_id  uuid NOT NULL,
    run_id          uuid,
    agent           text NOT NULL,
    provider        text NOT NULL,
    model           text NOT NULL,
    period_start    timestamptz NOT NULL,
    -- Ledger scopes this reservation holds ('project', and 'agent:<name>' when the agent has
    -- its own budget), so settlement returns exactly what was taken.
    scopes          text[] NOT NULL,
    tokens          bigint NOT NULL CHECK (tokens >= 0),
    micros          bigint NOT NULL CHECK (micros >= 0),
    state           text NOT NULL DEFAULT 'reserved' CHECK (state IN ('reserved', 'settled', 'expired')),
    actual_tokens   bigint,
    actual_micros   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    settled_at      timestamptz,
    PRIMARY KEY (project_id, reservation_id)
);
CREATE INDEX budget_reservations_open ON budget_reservations (project_id, expires_at) WHERE state = 'reserved';

-- The project breaker (opened by the anomaly counter). Provider circuit breakers are platform
-- resources (platform_resources, kind 'model_provider_breaker'): a shared provider's failover
-- state is global, not a tenant's.
CREATE TABLE model_breakers (
    project_id    text NOT NULL REFERENCES projects (project_id),
    breaker       text NOT NULL CHECK (breaker = 'project'),
    failures      integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    open_until    timestamptz,
    reason        text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, breaker)
);

-- Anomaly counter when Redis is not configured: events per kind per window.
CREATE TABLE model_anomalies (
    project_id    text NOT NULL REFERENCES projects (project_id),
    kind          text NOT NULL CHECK (kind IN ('denial', 'schema_failure', 'provider_error')),
    window_start  timestamptz NOT NULL,
    count         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, kind, window_start)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['budget_ledger', 'budget_reservations', 'model_breakers', 'model_anomalies'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (project_id = awooop_current_project()) '
            'WITH CHECK (project_id = awooop_current_project())', t);
    END LOOP;
END
$$;

-- Least privilege: ledger rows are never deleted (periods are history); reservations are
-- settled or expired in place; anomaly windows may be pruned.
GRANT SELECT, INSERT, UPDATE ON budget_ledger TO awooop_app;
GRANT SELECT, INSERT ON budget_reservations TO awooop_app;
GRANT UPDATE (state, actual_tokens, actual_micros, settled_at) ON budget_reservations TO awooop_app;
GRANT SELECT, INSERT, UPDATE ON model_breakers TO awooop_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON model_anomalies TO awooop_app;
