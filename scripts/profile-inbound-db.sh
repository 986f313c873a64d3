#!/usr/bin/env bash
# PostgreSQL's own cost of the channel hub's group commit (docs/benchmarks.md, "channels
# (session 6)"): a scratch database with every migration and some history, then the hub's
# statements (BEGIN + tenant scope, the guarded conversation_events insert, the one-statement
# runs + idempotency keys + audit insert, COMMIT) replayed from psql as the application role,
# prepared, with bound arrays. Prints the backend's own CPU per event (from /proc, so the
# machine's load disturbs it far less than wall time) for each batch size.
#
#   scripts/profile-inbound-db.sh [batch sizes...]     (default: 1 4 16 64 256)
#
# Needs psql on PATH and a local PostgreSQL (PGURL, default postgres://postgres@127.0.0.1:5432)
# whose backends this user may read in /proc (same machine). Drops its database at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/backend-cpu.sh
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=awooop_profile_inbound_$$
WORK=$(mktemp -d)
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
for f in migrations/*.sql; do psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done

psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 <<'EOF'
SET client_min_messages = warning;
CREATE FUNCTION prof_uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
    substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
    from 1 for 6), 52, 1), 53, 1), 'hex')::uuid $$;
INSERT INTO projects (project_id, display_name) VALUES ('bench', 'bench'), ('other', 'other');
-- History: 50,000 runs (finished but 500), their keys, events and audit rows.
INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash,
  trace_id, span_id, idempotency_key, max_attempts, deadline_at, reply_to)
SELECT CASE WHEN g % 4 = 0 THEN 'other' ELSE 'bench' END, prof_uuid7(), 'echo', 'canary',
  jsonb_build_object('channel', 'line', 'text', 'how are the pods?', 'n', g),
  'sha256:' || encode(sha256(g::text::bytea), 'hex'), gen_random_uuid(), 'sha256:x',
  md5(g::text), substr(md5(g::text || 's'), 1, 16), 'ch.line.old' || g, 3, now() + interval '15 min',
  '{"channel":"line","conversation":"U1"}'
FROM generate_series(1, 50000) g;
UPDATE runs SET state = 'running', worker_id = 'w', lease_expires_at = now() + interval '1 min'
  WHERE idempotency_key NOT IN (SELECT 'ch.line.old' || g FROM generate_series(49501, 50000) g);
UPDATE runs SET state = 'succeeded', finished_at = now(), output = '"ok"' WHERE state = 'running';
INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at)
  SELECT project_id, idempotency_key, 'sha256:x', run_id, now() + interval '1 day' FROM runs;
INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation,
  sender, kind, text, body_sha256, trace_id, run_id)
  SELECT project_id, gen_random_uuid(), 'line', 'line', 'old' || run_id, 'U1', 'U1', 'message', 'x',
    encode(sha256(run_id::text::bytea), 'hex'), trace_id, run_id FROM runs;
INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, trace_id, details)
  SELECT project_id, gen_random_uuid(), 'channel:line', 'run.create', run_id::text, 'ok', trace_id, '{}' FROM runs;
VACUUM ANALYZE;
EOF

cat > "$WORK/prep.sql" <<'EOF'
PREPARE ev(text, uuid[], text[], uuid[], text[]) AS
WITH current AS (SELECT (coalesce((SELECT mode FROM project_migration_state), 'shadow') = 'shadow'
    AND (SELECT revision_id FROM active_revisions WHERE kind = 'runtime' AND name = 'default') IS NOT DISTINCT FROM NULL::uuid
    AND (SELECT revision_id FROM active_revisions WHERE kind = 'agent' AND name = 'echo') IS NOT DISTINCT FROM NULL::uuid
    AND (SELECT revision_id FROM active_revisions WHERE kind = 'project' AND name = 'bench') IS NOT DISTINCT FROM NULL::uuid) AS ok),
ins AS (INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, sender,
    kind, text, body_sha256, reply_token, trace_id, mirrored, run_id)
  SELECT $1, u.e, 'line', 'line', u.x, 'U1', 'U1', 'message', 'how are the pods?', u.t || u.t, 'rt', u.t, false, u.r
  FROM unnest($2, $3, $4, $5) AS u(e, x, r, t) WHERE (SELECT ok FROM current)
  ON CONFLICT (project_id, channel, external_id) DO NOTHING RETURNING event_id)
SELECT (SELECT ok FROM current), coalesce((SELECT array_agg(event_id) FROM ins), '{}'::uuid[]);
PREPARE rk(text, uuid[], uuid[], text[], text[], text[], uuid[]) AS
WITH taken AS (SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE key = ANY($6)) AS yes),
r AS (INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash,
    project_revision_id, project_body_hash, trace_id, span_id, idempotency_key, max_attempts, deadline_at, reply_to,
    lease_seconds, max_concurrent)
  SELECT $1, u.r, 'echo', 'canary', jsonb_build_object('channel', 'line', 'text', 'how are the pods?', 'event_id', u.e),
    'sha256:' || u.t || u.t, '00000000-0000-0000-0000-000000000001', 'sha256:x', NULL, NULL, u.t, u.s, u.k, 3,
    now() + make_interval(secs => 900), '{"channel":"line","conversation":"U1"}'::jsonb, 20, 64
  FROM unnest($2, $3, $4, $5, $6) AS u(e, r, t, s, k) WHERE NOT (SELECT yes FROM taken)),
kk AS (INSERT INTO idempotency_keys (project_id, key, request_hash, run_id, expires_at)
  SELECT $1, u.k, 'sha256:' || u.t || u.t, u.r, now() + make_interval(secs => 86400)
  FROM unnest($6, $4, $3) AS u(k, t, r) WHERE NOT (SELECT yes FROM taken)),
a AS (INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details)
  SELECT $1, u.a, 'channel:line', 'run.create', u.r::text, 'ok', NULL, u.t,
    jsonb_build_object('agent', 'echo', 'mode', 'canary', 'input_hash', 'sha256:' || u.t || u.t)
  FROM unnest($7, $3, $4) AS u(a, r, t) WHERE NOT (SELECT yes FROM taken))
SELECT yes FROM taken;
EOF
cat > "$WORK/batch.sql" <<'EOF'
SELECT array_agg(gen_random_uuid()) AS e, array_agg(prof_uuid7()) AS r, array_agg(md5(random()::text)) AS x,
  array_agg(md5(random()::text)) AS t, array_agg(substr(md5(random()::text), 1, 16)) AS s,
  array_agg('ch.line.' || md5(random()::text)) AS k, array_agg(prof_uuid7()) AS a FROM generate_series(1, :n) \gset
BEGIN; SET LOCAL awooop.project_id = 'bench'; SET LOCAL ROLE awooop_app;
EXECUTE ev('bench', :'e', :'x', :'r', :'t');
EXECUTE rk('bench', :'e', :'r', :'t', :'s', :'k', :'a');
COMMIT;
EOF

sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1 4 16 64 256)
for n in "${sizes[@]}"; do
  reps=$(( n >= 64 ? 100 : 400 ))
  backend_cpu_script "$n" "$WORK/prep.sql" "$WORK/batch.sql" "$reps" "$WORK" > "$WORK/run.sql"
  t0=$(date +%s.%N)
  psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$WORK/run.sql" >/dev/null
  t1=$(date +%s.%N)
  ticks=$(backend_cpu_ticks "$WORK")
  awk -v n="$n" -v reps="$reps" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" -v w="$(echo "$t1 - $t0" | bc)" \
    -v la="$(cut -d' ' -f1 /proc/loadavg)" \
    'BEGIN { printf "batch=%d transactions=%d backend_cpu_us_per_event=%.0f wall_ms_per_transaction=%.2f load_avg_1m=%s\n", n, reps, ticks * 1e6 / hz / (n * reps), w * 1000 / (reps + 7), la }'
done
