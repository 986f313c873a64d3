#!/usr/bin/env bash
# PostgreSQL's own cost of one gateway call-audit row (docs/benchmarks.md, "Session 13"): the
# batched writer's statement (gateway::audit::insert: one INSERT ... SELECT FROM unnest of
# bound arrays per project and batch, ON CONFLICT DO NOTHING), replayed from psql as the
# application role under the tenant scope, prepared, on a scratch database with every
# migration. Prints the backend's own CPU per row (from /proc: the machine's load disturbs it
# far less than wall time) for each variant, each on a fresh database:
#
#   base         the schema as migrated
#   gen_only     the same parameters built and parsed, nothing inserted (the harness's own
#                share: subtract it)
#   no_fk        without the foreign key to projects (a check per row)
#   no_trace_ix  without the trace index
#   hash_trace   the trace index as a hash index on trace_id (measured and rejected: a caller
#                repeating one trace id makes every insert walk that bucket's overflow chain;
#                docs/benchmarks.md, "Session 23")
#   no_at_ix     without the (project_id, at DESC) index
#   no_trigger   without the statement-level tool-call event trigger (0075)
#   no_rls       row-level security off for the table (attribution only: never in production)
#   at_asc       the time index ascending instead of descending
#   c_trace      trace_id with collation "C" (c_keys: project_id too)
#   literal_refs the credential refs bound per row as an array literal (`{"a","b"}`, cast by
#                array_in) instead of a JSON array unpacked by a subquery per row
#   no_conflict  without ON CONFLICT DO NOTHING (attribution: the writer's retry needs it)
#
# The variants that remove something are attribution, not proposals: each of those objects
# carries a guarantee (docs/security.md) or a query the console needs.
#
#   scripts/profile-audit-insert.sh [batch size] [batches]     (default: 512 200)
#   VARIANTS="base no_fk" scripts/profile-audit-insert.sh      (a subset, in that order)
#
# Needs psql on PATH and a local PostgreSQL (PGURL, default postgres://postgres@127.0.0.1:5432)
# whose backends this user may read in /proc (same machine). Drops its databases at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/backend-cpu.sh
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
N=${1:-512}
REPS=${2:-200}
DB=awooop_profile_audit_$$
WORK=$(mktemp -d)
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1; rm -rf "$WORK"' EXIT

# The writer's statement, as gateway::audit::insert sends it.
cat > "$WORK/prep.sql" <<'EOF'
PREPARE ins(text, uuid[], timestamptz[], text[], uuid[], text[], text[], text[], text[], jsonb[], text[], text[],
    text[], int8[], int8[], int8[], bool[], jsonb[]) AS
INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, run_id, agent, tool, environment, mode,
    credential_refs, decision, code, result_status, latency_us, bytes_in, bytes_out, truncated, details)
SELECT $1, u.call_id, u.at, u.trace_id, u.run_id, u.agent, u.tool, u.environment, u.mode,
    ARRAY(SELECT jsonb_array_elements_text(u.refs)), u.decision, u.code, u.status, u.latency, u.bin, u.bout, u.trunc, u.details
FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[],
    $10::jsonb[], $11::text[], $12::text[], $13::text[], $14::int8[], $15::int8[], $16::int8[], $17::bool[], $18::jsonb[])
    AS u(call_id, at, trace_id, run_id, agent, tool, environment, mode, refs, decision, code, status, latency, bin, bout, trunc, details)
ON CONFLICT DO NOTHING;
EOF
# One batch: fresh call ids (UUIDv7, as the gateway's), timestamps and trace ids; the rest as a
# benchmark call's row (no run, one credential ref, an empty details object).
cat > "$WORK/batch.sql" <<'EOF'
SELECT array_agg(prof_uuid7()) AS c, array_agg(clock_timestamp()) AS at, array_agg(md5(random()::text)) AS t
FROM generate_series(1, :n) \gset
BEGIN; SET LOCAL awooop.project_id = 'bench'; SET LOCAL ROLE awooop_app;
EXECUTE ins('bench', :'c', :'at', :'t', array_fill(NULL::uuid, ARRAY[:n]), array_fill('wrk'::text, ARRAY[:n]),
  array_fill('fx__blob'::text, ARRAY[:n]), array_fill('dev'::text, ARRAY[:n]), array_fill('shadow'::text, ARRAY[:n]),
  array_fill('["fx-key"]'::jsonb, ARRAY[:n]), array_fill('allowed'::text, ARRAY[:n]), array_fill(NULL::text, ARRAY[:n]),
  array_fill('ok'::text, ARRAY[:n]), array_fill(812::int8, ARRAY[:n]), array_fill(22::int8, ARRAY[:n]),
  array_fill(1105::int8, ARRAY[:n]), array_fill(false, ARRAY[:n]), array_fill('{}'::jsonb, ARRAY[:n]));
COMMIT;
EOF
# The statement with each row's credential refs bound as a PostgreSQL array literal (text, read
# by array_in) instead of a JSON array unpacked by a subquery per row.
sed -e '1s/text\[\], jsonb\[\], text\[\], text\[\],$/text[], text[], text[], text[],/' \
    -e 's/ARRAY(SELECT jsonb_array_elements_text(u.refs))/u.refs::text[]/' \
    -e 's/\$10::jsonb\[\]/$10::text[]/' "$WORK/prep.sql" > "$WORK/prep-literal.sql"
sed 's/^ON CONFLICT DO NOTHING;$/;/' "$WORK/prep.sql" > "$WORK/prep-noconflict.sql"
sed "s/array_fill('\[\"fx-key\"\]'::jsonb/array_fill('{\"fx-key\"}'::text/" "$WORK/batch.sql" > "$WORK/batch-literal.sql"
# The same parameters parsed, nothing inserted.
sed -n '1,2p' "$WORK/prep.sql" > "$WORK/prep-gen.sql"
# shellcheck disable=SC2016 # $2 is the statement's parameter, not a shell variable
echo 'SELECT cardinality($2);' >> "$WORK/prep-gen.sql"

variant_sql() {
  case "$1" in
    base | gen_only | literal_refs | no_conflict) ;;
    no_fk) echo "ALTER TABLE mcp_call_audit DROP CONSTRAINT mcp_call_audit_project_id_fkey;" ;;
    no_trace_ix) echo "DROP INDEX mcp_call_audit_trace;" ;;
    hash_trace) echo "DROP INDEX mcp_call_audit_trace; CREATE INDEX mcp_call_audit_trace ON mcp_call_audit USING hash (trace_id);" ;;
    no_at_ix) echo "DROP INDEX mcp_call_audit_at;" ;;
    no_trigger) echo "DROP TRIGGER run_events_tool ON mcp_call_audit;" ;;
    at_asc) echo "DROP INDEX mcp_call_audit_at; CREATE INDEX mcp_call_audit_at ON mcp_call_audit (project_id, at);" ;;
    c_trace) echo "ALTER TABLE mcp_call_audit ALTER COLUMN trace_id TYPE text COLLATE \"C\";" ;;
    c_keys) cat <<'SQL'
DROP POLICY tenant_isolation ON mcp_call_audit;
ALTER TABLE mcp_call_audit ALTER COLUMN project_id TYPE text COLLATE "C", ALTER COLUMN trace_id TYPE text COLLATE "C";
CREATE POLICY tenant_isolation ON mcp_call_audit USING (project_id = awooop_current_project())
    WITH CHECK (project_id = awooop_current_project());
SQL
      ;;
    no_rls) echo "ALTER TABLE mcp_call_audit NO FORCE ROW LEVEL SECURITY; ALTER TABLE mcp_call_audit DISABLE ROW LEVEL SECURITY;" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

read -r -a variants <<< "${VARIANTS:-base gen_only no_fk no_trace_ix hash_trace no_at_ix no_trigger no_rls at_asc c_trace c_keys}"
for v in "${variants[@]}"; do
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
  psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
  for f in migrations/*.sql; do psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
  psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 <<EOF
SET client_min_messages = warning;
CREATE FUNCTION prof_uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS \$\$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
    substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
    from 1 for 6), 52, 1), 53, 1), 'hex')::uuid \$\$;
GRANT EXECUTE ON FUNCTION prof_uuid7() TO PUBLIC;
INSERT INTO projects (project_id, display_name) VALUES ('bench', 'bench'), ('other', 'other');
$(variant_sql "$v")
VACUUM ANALYZE;
EOF
  batch="$WORK/batch.sql"
  case "$v" in
    gen_only) prep="$WORK/prep-gen.sql" ;;
    literal_refs) prep="$WORK/prep-literal.sql" batch="$WORK/batch-literal.sql" ;;
    no_conflict) prep="$WORK/prep-noconflict.sql" ;;
    *) prep="$WORK/prep.sql" ;;
  esac
  backend_cpu_script "$N" "$prep" "$batch" "$REPS" "$WORK" > "$WORK/run.sql"
  t0=$(date +%s.%N)
  psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$WORK/run.sql" >/dev/null
  t1=$(date +%s.%N)
  rows=$(psql "$PGURL/$DB" -qtA -c "SELECT count(*) FROM mcp_call_audit")
  ticks=$(backend_cpu_ticks "$WORK")
  awk -v v="$v" -v n="$N" -v reps="$REPS" -v rows="$rows" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" \
    -v w="$(echo "$t1 - $t0" | bc)" -v la="$(cut -d' ' -f1 /proc/loadavg)" \
    'BEGIN { printf "variant=%s batch=%d rows=%d backend_cpu_us_per_row=%.1f wall_ms_per_batch=%.2f load_avg_1m=%s\n", v, n, rows, ticks * 1e6 / hz / (n * reps), w * 1000 / (reps + 7), la }'
done
