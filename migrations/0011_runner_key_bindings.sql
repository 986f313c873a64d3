-- Runner API keys are bound to the agents and environments they may act for (issue 11, item 4):
-- the `/mcp` headers X-Awooop-Agent / X-Awooop-Environment and a run's `agent` may only pick
-- from these lists. `*` means any and is written deliberately by the administrator.
-- Keys minted before this migration keep NULL lists, which allow nothing (fail closed): mint a
-- new runner key with its bindings.
ALTER TABLE api_keys
    ADD COLUMN agents text[],
    ADD COLUMN environments text[];

ALTER TABLE api_keys ADD CONSTRAINT api_keys_runner_bound CHECK (
    NOT ('runner' = ANY (roles))
    OR (cardinality(agents) BETWEEN 1 AND 256 AND cardinality(environments) BETWEEN 1 AND 256)
) NOT VALID;

ALTER TABLE api_keys ADD CONSTRAINT api_keys_bindings_only_for_runners CHECK (
    'runner' = ANY (roles) OR (agents IS NULL AND environments IS NULL)
) NOT VALID;
