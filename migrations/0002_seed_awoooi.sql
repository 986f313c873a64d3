-- The first tenant: AWOOOI, in shadow mode, with behaviour unchanged (shadow runs only audit
-- and trace). The migration runs as the owner, who is subject to FORCE ROW LEVEL SECURITY like
-- everyone else, so it enters the tenant's scope for these inserts.
SELECT set_config('awooop.project_id', 'awoooi', true);

INSERT INTO projects (project_id, display_name, required_approvals)
VALUES ('awoooi', 'AWOOOI (AIOps / SRE)', 2)
ON CONFLICT (project_id) DO NOTHING;

INSERT INTO project_migration_state (project_id, mode, changed_by)
VALUES ('awoooi', 'shadow', 'migration')
ON CONFLICT (project_id) DO NOTHING;

INSERT INTO project_migration_history (project_id, change_id, from_mode, to_mode, forced, reason, changed_by)
SELECT 'awoooi', '00000000-0000-7000-8000-000000000001', NULL, 'shadow', false, 'seeded as the first tenant', 'migration'
WHERE NOT EXISTS (SELECT 1 FROM project_migration_history WHERE project_id = 'awoooi');

SELECT set_config('awooop.project_id', '', true);
