#!/usr/bin/env bash
# PostgreSQL's own cost of draining runs (docs/benchmarks.md, "drain (session 7)"): a scratch
# database with every migration and realistic history, Q queued runs (bulk, no per-project cap,
# as `awooop bench runs`' uncapped drain) and 1,024 runs already running (4 workers x 256 slots,
# so the claim's per-project count sees what it sees in the benchmark), then the worker's own
# statements replayed from psql as the runtime role, prepared, with bound arrays:
#
#   refill mode (default), one transaction per cycle = the completion writer with refill:
#     BEGIN; SET LOCAL awooop.project_id     (tenant scope)
#     SELECT ... FOR NO KEY UPDATE           (complete_batch's fence, as a lock: migration 0074)
#     INSERT run_steps ... unnest            (journal, one step per run; sets awooop.step_seq deferred)
#     fenced UPDATE runs ... FROM unnest     (the batch claimed last cycle; event_seq catches up;
#                                             its audit rows, one per run, and the numbering reset
#                                             in the same statement since session 33)
#     SET LOCAL awooop.scope = 'worker'; claim_in(batch)   (the refill, on its generic plan)
#     COMMIT
#   The session runs with jit = off, as the app pool's connections do (awooop_store::db).
#   The built-in claim, fence lock and completion statements are the worker's own
#   (awooop_runtime::repo::{CLAIM_SQL, FENCE_LOCK_SQL, COMPLETE_SQL}): a unit test of that
#   module fails when they differ, so change both together.
#   Before session 15 the script replayed the claim of before migration 0073, the completion of
#   before 0074 and left JIT on: its claim figures were an LLVM compile per execution.
#   separate mode (SEPARATE=1): the same completion, then the claim in its own worker-scope
#     transaction (the claim loop's worker_claim_for; AWOOOP_BENCH_REFILL=0).
#   heartbeat: worker_heartbeat over 256 held runs, after the cycles (per held run).
#
# Prints the backend's own CPU (from /proc/<pid>/schedstat, nanoseconds, so the machine's load
# disturbs it far less than wall time) per run, split by phase, for each batch size.
#
#   scripts/profile-drain-db.sh [batch sizes...]     (default: 64 256)
#
# Environment:
#   PGURL        server (default postgres://postgres@127.0.0.1:5432); same machine (reads /proc)
#   MIGRATIONS   directory of migrations to apply (default: migrations/ of this checkout);
#                run with a base checkout's directory for the old figure
#   EXTRA_SQL    a file run as the owner after the migrations (an experiment)
#   CLAIM_SQL    a file with the claim statements (PREPARE projects(bigint, text) and
#                PREPARE claim(bigint, text, float8, text[], bigint[])) to use instead of the built-in
#                ones (operator/runtime/src/repo.rs CLAIM_PROJECTS_SQL, CLAIM_SQL)
#   CYCLES       measured cycles per batch size (default: 12800 runs' worth, at least 40)
#   QUEUED       queued runs (default 40000); HISTORY finished runs before them (default 50000)
#   OTHER_RUNNING  runs of another project already running (default 0): what a claim pays for
#                other tenants' work in flight
#   OTHER_BACKLOGS  other projects with 100 queued runs each, newer than the drained queue
#                (default 0): what a claim pays for other tenants' backlogs
#   CLAIM_PLAN   plan_cache_mode of the claim's transaction (default force_generic_plan, as
#                repo::CLAIM_BEGIN sets it; auto, the server's default, for the old figure)
#   PERF=1       perf record -g the backend over the measured cycles; report (--no-inline)
#   EXPLAIN=1    EXPLAIN (ANALYZE, BUFFERS) of one cycle's statements after the measurement
#   KEEP=1       keep the scratch database (its name is printed)
#   (OLD=1, the completion and heartbeat statements before session 7, is gone since session 33:
#   the completion now writes its audit rows and resets the journal's numbering itself, and the
#   old fences are in git history, `git show 9db2946:scripts/profile-drain-db.sh`.)
#
# Drops its database at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
MIGRATIONS=${MIGRATIONS:-migrations}
QUEUED=${QUEUED:-40000}
HISTORY=${HISTORY:-50000}
DB=awooop_profile_drain_$$
WORK=$(mktemp -d)
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  else
    echo "kept database $DB" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
setup_db() {
psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
for f in "$MIGRATIONS"/*.sql; do psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
if [ -n "${EXTRA_SQL:-}" ]; then psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$EXTRA_SQL" >/dev/null; fi

# History and queue, written through the real triggers (run events, state machine) as the owner.
psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -v history="$HISTORY" -v queued="$QUEUED" -v other="${OTHER_RUNNING:-0}" -v backlogs="${OTHER_BACKLOGS:-0}" <<'EOF'
SET client_min_messages = warning;
CREATE FUNCTION prof_uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
    substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
    from 1 for 6), 52, 1), 53, 1), 'hex')::uuid $$;
GRANT EXECUTE ON FUNCTION prof_uuid7() TO awooop_app;
INSERT INTO projects (project_id, display_name) VALUES ('bench', 'bench'), ('other', 'other');
INSERT INTO projects (project_id, display_name)
SELECT 'tenant-' || i, 'tenant' FROM generate_series(1, :backlogs) i;
-- n queued runs spread round-robin over `projects`, capped at `cap`, created at `at`; `salt`
-- keeps the trace ids of different calls apart.
CREATE FUNCTION prof_enqueue(projects text[], n int, cap int, at timestamptz, salt text) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO runs (project_id, run_id, agent, mode, input, input_hash, agent_revision_id, agent_body_hash,
    trace_id, span_id, max_attempts, deadline_at, max_concurrent, created_at)
  SELECT projects[1 + g % cardinality(projects)], prof_uuid7(), 'noop', 'shadow', '{}'::jsonb,
    'sha256:' || encode(sha256(g::text::bytea), 'hex'), '00000000-0000-0000-0000-000000000001', 'sha256:x',
    md5(g::text || salt), substr(md5(g::text || salt || 's'), 1, 16), 3, now() + interval '1 hour', cap, at
  FROM generate_series(1, n) g $$;
-- History: finished runs of two projects with their events, journal rows and audit rows.
SELECT prof_enqueue(ARRAY['other', 'bench', 'bench', 'bench'], :history, 100000, now(), '');
UPDATE runs SET state = 'running', attempt = 1, worker_id = 'old', lease_expires_at = now() + interval '1 min',
  started_at = now();
INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, output,
  trace_id, span_id, started_at)
SELECT project_id, run_id, 0, 1, 'done', 'output', input_hash, 'succeeded', '"ok"', trace_id, span_id, now() FROM runs;
UPDATE runs SET state = 'succeeded', output = '"ok"', finished_at = now(), worker_id = NULL, lease_expires_at = NULL;
INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, trace_id, details)
  SELECT project_id, prof_uuid7(), a, CASE a WHEN 'cli:bench' THEN 'run.create' ELSE 'run.finish' END,
    run_id::text, 'ok', trace_id, '{"state":"succeeded","attempt":1,"error_code":null}'
  FROM runs, unnest(ARRAY['cli:bench', 'worker']) a;
-- The queue: bulk-inserted like `awooop bench runs`' uncapped drain.
SELECT prof_enqueue(ARRAY['bench'], :queued, 100000, now(), 'q');
-- OTHER_RUNNING: another tenant's runs in flight (its own workers hold them).
SELECT prof_enqueue(ARRAY['other'], :other, 100000, now(), 'o');
UPDATE runs SET state = 'running', attempt = 1, worker_id = 'bg-other', lease_expires_at = now() + interval '1 hour',
  heartbeat_at = now(), started_at = now() WHERE project_id = 'other' AND state = 'queued';
-- OTHER_BACKLOGS: as many other tenants with 100 queued runs each, newer than bench's queue
-- (so a claim that stops when it has its runs never needs them).
SELECT prof_enqueue(ARRAY(SELECT 'tenant-' || i FROM generate_series(1, :backlogs) i), 100 * :backlogs, 64,
  now() + interval '1 hour', 't') WHERE :backlogs > 0;
VACUUM ANALYZE;
EOF

}

# The worker's statements (operator/runtime/src/repo.rs), prepared as sqlx prepares them. The
# claim is wrapped only to hand the claimed ids, attempts and traces to the next cycle's
# completion (psql variables); the statement inside is claim_in's, RETURNING the same columns.
if [ -n "${CLAIM_SQL:-}" ]; then cp "$CLAIM_SQL" "$WORK/claim.sql"; else
cat > "$WORK/claim.sql" <<'EOF'
PREPARE projects(bigint, text) AS
SELECT locked, busy, passed_over, queued FROM awooop_claim_projects($1, $2);
PREPARE claim(bigint, text, float8, text[], bigint[]) AS
WITH room AS (
    SELECT qp.project_id, h.head, qp.busy, least($1, h.mc - qp.busy) AS n
    FROM unnest($4::text[], $5::bigint[]) AS qp(project_id, busy)
    CROSS JOIN LATERAL (
        SELECT r.created_at AS head, r.max_concurrent AS mc FROM runs r
        WHERE r.project_id = qp.project_id AND r.state IN ('queued', 'retrying')
        ORDER BY r.created_at LIMIT 1) h),
 c AS (
    SELECT q.project_id, q.run_id, q.created_at
    FROM (SELECT project_id, head, n FROM room WHERE n > 0 ORDER BY head, project_id) o
    CROSS JOIN LATERAL (
        SELECT r.project_id, r.run_id, r.created_at FROM runs r
        WHERE r.project_id = o.project_id AND r.state IN ('queued', 'retrying')
          AND r.created_at >= o.head AND r.run_after <= now()
        ORDER BY r.created_at LIMIT o.n
        FOR NO KEY UPDATE SKIP LOCKED) q
    LIMIT $1),
 k AS (
    SELECT c.project_id, c.run_id,
           row_number() OVER (PARTITION BY c.project_id ORDER BY c.created_at, c.run_id) AS rn
    FROM c),
 u AS (
 UPDATE runs r SET state = 'running', attempt = r.attempt + 1, worker_id = $2,
    lease_expires_at = now() + make_interval(secs => least($3, r.lease_seconds)), heartbeat_at = now(),
    started_at = coalesce(r.started_at, now()), updated_at = now()
 FROM k JOIN room b ON b.project_id = k.project_id
 WHERE r.project_id = k.project_id AND r.run_id = k.run_id
   AND k.rn + b.busy <= r.max_concurrent
 RETURNING r.project_id, r.run_id, r.agent, r.mode, r.input, r.agent_revision_id, r.trace_id, r.span_id, r.attempt, r.created_at, r.reply_to)
SELECT count(*) AS got, coalesce(array_agg(run_id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS att,
  coalesce(array_agg(trace_id), '{}') AS tr, coalesce(array_agg(span_id), '{}') AS sp FROM u;
EOF
fi
cat > "$WORK/prep.sql" <<'EOF'
PREPARE done(uuid[], int[], text[], jsonb[], text[], text[], text, uuid[], text[], text[], text[], text[], text[], text[], jsonb[]) AS
WITH done AS (UPDATE runs r SET state = h.state, output = NULLIF(h.output, 'null'::jsonb), error_code = h.code,
 error_message = h.msg,
 finished_at = CASE WHEN h.state IN ('succeeded','failed','cancelled','timed_out') THEN now() ELSE r.finished_at END,
 worker_id = NULL, lease_expires_at = NULL, updated_at = now(),
 event_seq = greatest(r.event_seq, (SELECT coalesce(max(e.seq), 0) FROM run_events e
   WHERE e.project_id = r.project_id AND e.run_id = r.run_id))
 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
   array_fill('running'::text, ARRAY[cardinality($1::uuid[])])) AS h(run_id, attempt, state, output, code, msg, expect)
 WHERE r.project_id = $7 AND r.run_id = h.run_id AND r.attempt = h.attempt AND r.state = h.expect
 RETURNING r.run_id, r.attempt),
 a AS (INSERT INTO audit_log (project_id, audit_id, actor, action, target, outcome, code, trace_id, details)
 SELECT $7, x.id, x.actor, x.action, x.target, x.outcome, x.code, x.trace, x.details
 FROM unnest($1::uuid[], $2::int[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
   $14::text[], $15::jsonb[]) AS x(run_id, attempt, id, actor, action, target, outcome, code, trace, details)
 WHERE (x.run_id, x.attempt) IN (SELECT run_id, attempt FROM done))
 SELECT run_id FROM done
 UNION ALL SELECT NULL::uuid FROM (SELECT set_config('awooop.step_seq', '', true) AS off) z WHERE z.off IS NULL;
PREPARE lock(uuid[], int[], text) AS
SELECT r.run_id FROM runs r
 JOIN unnest($1::uuid[], $2::int[], array_fill('running'::text, ARRAY[cardinality($1::uuid[])]))
   AS h(run_id, attempt, expect)
   ON r.run_id = h.run_id AND r.attempt = h.attempt AND r.state = h.expect
 WHERE r.project_id = $3
 FOR NO KEY UPDATE OF r;
PREPARE journal(text, uuid[], int[], int[], text[], text[], text[], text[], jsonb[], text[], text[], text[], timestamptz[]) AS
INSERT INTO run_steps (project_id, run_id, step_index, attempt, step_key, step_type, input_hash, status, output, error_code, trace_id, span_id, started_at)
 SELECT $1, u.* FROM unnest($2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::timestamptz[])
   AS u(run_id, step_index, attempt, step_key, step_type, input_hash, status, output, error_code, trace_id, span_id, started_at)
 CROSS JOIN (SELECT set_config('awooop.step_seq', 'deferred', true) AS deferred OFFSET 0) d
 ON CONFLICT DO NOTHING;
PREPARE beat(text, uuid[], int[], float8) AS
UPDATE runs r SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => least($4, r.lease_seconds))
 FROM (SELECT x.run_id FROM runs x JOIN unnest($2::uuid[], $3::int[],
         array_fill('running'::text, ARRAY[cardinality($2::uuid[])])) AS h(run_id, attempt, expect)
       ON x.run_id = h.run_id AND x.attempt = h.attempt
       WHERE x.state = h.expect AND x.worker_id = $1 FOR UPDATE OF x SKIP LOCKED) l
 WHERE r.run_id = l.run_id;
EOF

# Client-side arrays of one completion batch (what the worker binds), built by psql from the
# claimed ids: states, outputs, codes, the journal's columns and the audit rows. They are made
# in a separate statement *outside* the measured phases (the backend builds them, but its CPU
# for that is not counted).
mkarrays() { # $1 = variable prefix of the claimed batch
  cat <<EOF
SELECT array_fill('succeeded'::text, ARRAY[$n]) AS st, array_fill('"ok"'::jsonb, ARRAY[$n]) AS out,
  array_fill(NULL::text, ARRAY[$n]) AS nul, array_fill(0, ARRAY[$n]) AS idx, array_fill('done'::text, ARRAY[$n]) AS key,
  array_fill('output'::text, ARRAY[$n]) AS typ,
  array_fill('sha256:' || repeat('ab', 32), ARRAY[$n]) AS ih, array_fill(now(), ARRAY[$n]) AS at,
  array_fill('worker'::text, ARRAY[$n]) AS actor, array_fill('run.finish'::text, ARRAY[$n]) AS action,
  array_fill('ok'::text, ARRAY[$n]) AS outcome,
  (SELECT array_agg(prof_uuid7()) FROM generate_series(1, $n)) AS aid,
  (SELECT array_agg(x::text) FROM unnest(:'${1}ids'::uuid[]) x) AS tgt,
  (SELECT array_agg(jsonb_build_object('state', 'succeeded', 'attempt', a, 'error_code', NULL)) FROM unnest(:'${1}att'::int[]) a) AS det
\gset a_
EOF
}
phase() { echo "\\! echo $1 \$(cut -d' ' -f1 /proc/\$PID/schedstat) >> $WORK/phases"; }
# The statements of one measured phase (arguments 2...), then its mark (warm-up cycles: none).
step() {
  local name=$1; shift
  printf '%s\n' "$@"
  if [ "$i" -ge 1 ]; then phase "$name"; fi
}

# A claim as claim_in runs it: lock the projects (migration 0077), then claim from those.
# $1 = size, $2 = worker, $3 = what psql does with the claimed rows.
claim() {
  echo "EXECUTE projects($1, NULL) \\gset p_"
  echo "EXECUTE claim($1, '$2', 30, :'p_locked', :'p_busy') $3"
}

sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(64 256)
for n in "${sizes[@]}"; do
  # A fresh database per batch size: each starts from the same history and queue.
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  setup_db
  cycles=${CYCLES:-$(( 12800 / n ))}; [ "$cycles" -ge 40 ] || cycles=40
  : > "$WORK/phases"
  {
    echo 'SET client_min_messages = warning;'
    echo 'SELECT pg_backend_pid() AS pid \gset'
    echo '\setenv PID :pid'
    echo 'SET ROLE awooop_app;'
    # As the app pool's connections (awooop_store::db): no JIT. With it, every execution of a
    # generic plan whose estimate passes jit_above_cost pays an LLVM compile (the claim: ~25 ms).
    echo 'SET jit = off;'
    cat "$WORK/claim.sql" "$WORK/prep.sql"
    # 1,024 runs running for other workers (4 x 256 slots), claimed by the real statement.
    for w in 1 2 3 4; do
      echo "BEGIN; SET LOCAL awooop.scope = 'worker'; SET LOCAL plan_cache_mode = ${CLAIM_PLAN:-force_generic_plan}; SET LOCAL enable_bitmapscan = off;"
      claim 256 "bg-$w" '\g /dev/null'
      echo "COMMIT;"
    done
    # Our batch in flight.
    echo "BEGIN; SET LOCAL awooop.scope = 'worker'; SET LOCAL plan_cache_mode = ${CLAIM_PLAN:-force_generic_plan}; SET LOCAL enable_bitmapscan = off;"
    claim "$n" w '\gset b_'
    echo "COMMIT;"
    for i in $(seq -7 "$cycles"); do    # 8 warm-up cycles (custom plans, then the generic one)
      mkarrays b_
      [ "$i" -ge 1 ] && phase begin
      echo "BEGIN; SET LOCAL awooop.project_id = 'bench';"
      done_sql="EXECUTE done(:'b_ids', :'b_att', :'a_st', :'a_out', :'a_nul', :'a_nul', 'bench', :'a_aid', :'a_actor', :'a_action', :'a_tgt', :'a_outcome', :'a_nul', :'b_tr', :'a_det') \\g /dev/null"
      journal_sql="EXECUTE journal('bench', :'b_ids', :'a_idx', :'b_att', :'a_key', :'a_typ', :'a_ih', :'a_st', :'a_out', :'a_nul', :'b_tr', :'b_sp', :'a_at');"
      # complete_batch: lock the fence, journal with deferred step numbering (migration 0074),
      # then the state change that catches event_seq up, with its audit rows (session 33).
      step lock "EXECUTE lock(:'b_ids', :'b_att', 'bench') \\g /dev/null"
      step journal "$journal_sql"
      step update "$done_sql"
      if [ "${SEPARATE:-0}" = 1 ]; then
        echo "COMMIT;"
        [ "$i" -ge 1 ] && phase commit
        echo "BEGIN; SET LOCAL awooop.scope = 'worker';"
      else
        echo "SET LOCAL awooop.scope = 'worker';"
      fi
      echo "SET LOCAL plan_cache_mode = ${CLAIM_PLAN:-force_generic_plan}; SET LOCAL enable_bitmapscan = off;"
      claim "$n" w '\gset b_'
      [ "$i" -ge 1 ] && phase claim
      echo "COMMIT;"
      [ "$i" -ge 1 ] && phase commit
    done
    # Heartbeats of one background worker's 256 held runs.
    echo "SELECT array_agg(run_id) AS ids, array_agg(attempt) AS att FROM runs WHERE false \\gset h_"
    echo "RESET ROLE; SELECT array_agg(run_id) AS ids, array_agg(attempt) AS att FROM runs WHERE worker_id = 'bg-1' AND state = 'running' \\gset h_"
    echo "SET ROLE awooop_app;"
    phase beatstart
    for _ in $(seq 40); do
      echo "BEGIN; SET LOCAL awooop.scope = 'worker'; EXECUTE beat('bg-1', :'h_ids', :'h_att', 30); COMMIT;"
    done
    phase beatend
    if [ "${EXPLAIN:-0}" = 1 ]; then
      mkarrays b_
      echo "BEGIN; SET LOCAL awooop.project_id = 'bench';"
      echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE lock(:'b_ids', :'b_att', 'bench');"
      echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE journal('bench', :'b_ids', :'a_idx', :'b_att', :'a_key', :'a_typ', :'a_ih', :'a_st', :'a_out', :'a_nul', :'b_tr', :'b_sp', :'a_at');"
      echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE done(:'b_ids', :'b_att', :'a_st', :'a_out', :'a_nul', :'a_nul', 'bench', :'a_aid', :'a_actor', :'a_action', :'a_tgt', :'a_outcome', :'a_nul', :'b_tr', :'a_det');"
      echo "SET LOCAL awooop.scope = 'worker';"
      echo "SET LOCAL plan_cache_mode = ${CLAIM_PLAN:-force_generic_plan}; SET LOCAL enable_bitmapscan = off;"
      echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE projects($n, NULL);"
      echo "EXECUTE projects($n, NULL) \\gset p_"
      echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim($n, 'w', 30, :'p_locked', :'p_busy');"
      echo "COMMIT;"
      echo "BEGIN; SET LOCAL awooop.scope = 'worker'; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE beat('bg-1', :'h_ids', :'h_att', 30); COMMIT;"
    fi
  } > "$WORK/run.sql"
  if [ "${PERF:-0}" = 1 ]; then
    # Start perf on the backend once it has a pid: psql prints nothing until then, so poll.
    ( while ! grep -q . "$WORK/phases" 2>/dev/null; do sleep 0.05; done
      pid=$(psql "$PGURL/$DB" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND pid <> pg_backend_pid() AND backend_type = 'client backend' LIMIT 1")
      exec perf record -q -g -o "$WORK/perf.data" -p "$pid" 2>/dev/null ) &
    perfjob=$!
  fi
  upd0=$(psql "$PGURL/$DB" -Atc "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'runs'")
  t0=$(date +%s.%N)
  if [ "${EXPLAIN:-0}" = 1 ]; then
    psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$WORK/run.sql" | grep -v '^\s*$' | sed -n '/QUERY PLAN/,$p' > "$WORK/explain.txt"
  else
    psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$WORK/run.sql" >/dev/null
  fi
  t1=$(date +%s.%N)
  if [ "${PERF:-0}" = 1 ]; then
    pkill -INT -P "$$" -x perf 2>/dev/null || kill -INT "$perfjob" 2>/dev/null || true
    wait "$perfjob" 2>/dev/null || true
  fi
  sleep 0.5   # the backend's statistics are flushed when it exits
  upd1=$(psql "$PGURL/$DB" -Atc "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'runs'")
  awk -v n="$n" -v cycles="$cycles" -v upd="$upd0 $upd1" -v w="$(echo "$t1 - $t0" | bc)" -v la="$(cut -d' ' -f1 /proc/loadavg)" \
      -v sep="${SEPARATE:-0}" '
    { t[NR] = $2; p[NR] = $1 }
    END {
      for (i = 2; i <= NR; i++) {
        if (p[i] == "beatend") { beat = t[i] - t[i-1]; continue }
        if (p[i] == "beatstart" || p[i] == "begin") continue
        cost[p[i]] += t[i] - t[i-1]; if (p[i] != "beatend") total += t[i] - t[i-1]
      }
      runs = n * cycles
      split(upd, u, " ")
      printf "batch=%d cycles=%d mode=%s backend_cpu_us_per_run=%.1f (lock %.1f update+audit %.1f journal %.1f claim %.1f commit %.1f) heartbeat_us_per_held_run=%.2f runs_updates=%d hot=%.0f%% wall_s=%.1f load_avg_1m=%s\n",
        n, cycles, (sep == 1 ? "separate" : "refill"), total / 1000 / runs, cost["lock"] / 1000 / runs, cost["update"] / 1000 / runs,
        cost["journal"] / 1000 / runs, cost["claim"] / 1000 / runs,
        cost["commit"] / 1000 / runs, beat / 1000 / (40 * 256), u[3] - u[1],
        (u[3] - u[1] > 0 ? 100 * (u[4] - u[2]) / (u[3] - u[1]) : 0), w, la
    }' "$WORK/phases"
  if [ "${EXPLAIN:-0}" = 1 ]; then cat "$WORK/explain.txt"; fi
  if [ "${PERF:-0}" = 1 ] && [ -s "$WORK/perf.data" ]; then
    perf report -i "$WORK/perf.data" --no-inline --no-children --stdio --percent-limit 1.5 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
    perf report -i "$WORK/perf.data" --no-inline --children --stdio --percent-limit 4 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -50
  fi
done
