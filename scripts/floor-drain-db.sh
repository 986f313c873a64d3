#!/usr/bin/env bash
# The floor under `awooop bench runs`' drain (docs/benchmarks.md, "drain (session 7)"): what
# PostgreSQL alone does for the writes the run path's guarantees need, batched, with several
# concurrent clients (pgbench), on a bare schema in a scratch database of the same server.
#
#   scripts/floor-drain-db.sh [full|journal|min] [BATCH] [CLIENTS] [JOBS_PER_CLIENT]   (default: full 256 4 20480)
#
# One transaction per cycle and client, like the completion writer with refill: the fenced
# completion of the batch this client claimed in its previous cycle, then the next claim
# (`FOR NO KEY UPDATE SKIP LOCKED`, attempt bump). "full" also writes, per run, the journal row,
# the audit row and the run events (`state` at the claim; `state`, `output`, `step` at the
# completion), with a row-level state-machine trigger on the runs table; "min" writes only the
# claim and the fenced completion (what graphile-worker writes, except that it deletes a finished
# job where we keep the run). "journal" is "full" without the run events: the claim, the fenced
# completion, the journal row, the audit row and the state machine (the guarantees issue 18
# lists, without the event feed). None has RLS, foreign keys or CHECKs: a floor, not our schema.
# Prints jobs completed per second (wall time of pgbench). Compare with
# `scripts/bench-runs-peer.sh 20000 10` in the same minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
mode=${1:-full}; b=${2:-256}; c=${3:-4}; per=${4:-20480}
DB=awooop_floor_drain_$$
WORK=$(mktemp -d)
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -v jobs=$(( c * per + c * b + 1000 )) >/dev/null <<'SQL'
CREATE TABLE fr (
  project text NOT NULL, id uuid NOT NULL, state text NOT NULL DEFAULT 'queued', attempt int NOT NULL DEFAULT 0,
  worker text, lease timestamptz, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), input jsonb NOT NULL,
  output jsonb, finished_at timestamptz, event_seq int NOT NULL DEFAULT 1, PRIMARY KEY (project, id));
CREATE INDEX fr_queue ON fr (created_at) WHERE state = 'queued';
CREATE INDEX fr_leased ON fr (lease) WHERE state = 'running';
CREATE TABLE fs (project text, run uuid, idx int, attempt int, status text, output jsonb, PRIMARY KEY (project, run, idx, attempt, status));
CREATE TABLE fa (project text, id uuid, target text, details jsonb, at timestamptz DEFAULT now(), PRIMARY KEY (project, id));
CREATE TABLE fe (project text, run uuid, seq int, kind text, data jsonb, PRIMARY KEY (project, run, seq));
-- the state machine guarantee, as in 0003 (row trigger, only when the state changes)
CREATE FUNCTION fr_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT ((OLD.state = 'queued' AND NEW.state = 'running') OR (OLD.state = 'running' AND NEW.state IN ('succeeded','failed','retrying'))) THEN
    RAISE EXCEPTION 'illegal % -> %', OLD.state, NEW.state;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fr_sm BEFORE UPDATE OF state ON fr FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION fr_transition();
INSERT INTO fr (project, id, input) SELECT 'bench', gen_random_uuid(), '{}' FROM generate_series(1, :jobs);
VACUUM ANALYZE;
SQL
cat > "$WORK/full.sql" <<'SQL'
BEGIN;
WITH h AS (SELECT * FROM unnest(:ids::uuid[], :att::int[]) AS h(id, attempt)),
 done AS (UPDATE fr r SET state = 'succeeded', output = '"ok"', finished_at = now(), worker = NULL, lease = NULL, event_seq = r.event_seq + 3
   FROM h WHERE r.project = 'bench' AND r.id = h.id AND r.attempt = h.attempt AND r.state = (SELECT 'running'::text FROM h LIMIT 1)
   RETURNING r.id, r.attempt, r.event_seq),
 j AS (INSERT INTO fs SELECT 'bench', id, 0, attempt, 'succeeded', '"ok"' FROM done),
 a AS (INSERT INTO fa SELECT 'bench', gen_random_uuid(), id::text, jsonb_build_object('state','succeeded','attempt',attempt) FROM done),
 e AS (INSERT INTO fe SELECT 'bench', id, event_seq - 2 + k, (ARRAY['state','output','step'])[k+1], '{}' FROM done, generate_series(0, 2) k)
SELECT count(*) FROM done;
WITH c AS (SELECT project, id FROM fr WHERE state = 'queued' ORDER BY created_at LIMIT :batch FOR NO KEY UPDATE SKIP LOCKED),
 u AS (UPDATE fr r SET state = 'running', attempt = r.attempt + 1, worker = 'w' || :client_id, lease = now() + interval '30 s', event_seq = r.event_seq + 1
   FROM c WHERE r.project = c.project AND r.id = c.id RETURNING r.id, r.attempt, r.event_seq),
 e AS (INSERT INTO fe SELECT 'bench', id, event_seq, 'state', '{}' FROM u)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS att FROM u \gset
COMMIT;
SQL
cat > "$WORK/journal.sql" <<'SQL'
BEGIN;
WITH h AS (SELECT * FROM unnest(:ids::uuid[], :att::int[]) AS h(id, attempt)),
 done AS (UPDATE fr r SET state = 'succeeded', output = '"ok"', finished_at = now(), worker = NULL, lease = NULL
   FROM h WHERE r.project = 'bench' AND r.id = h.id AND r.attempt = h.attempt AND r.state = (SELECT 'running'::text FROM h LIMIT 1)
   RETURNING r.id, r.attempt),
 j AS (INSERT INTO fs SELECT 'bench', id, 0, attempt, 'succeeded', '"ok"' FROM done),
 a AS (INSERT INTO fa SELECT 'bench', gen_random_uuid(), id::text, jsonb_build_object('state','succeeded','attempt',attempt) FROM done)
SELECT count(*) FROM done;
WITH c AS (SELECT project, id FROM fr WHERE state = 'queued' ORDER BY created_at LIMIT :batch FOR NO KEY UPDATE SKIP LOCKED),
 u AS (UPDATE fr r SET state = 'running', attempt = r.attempt + 1, worker = 'w' || :client_id, lease = now() + interval '30 s'
   FROM c WHERE r.project = c.project AND r.id = c.id RETURNING r.id, r.attempt)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS att FROM u \gset
COMMIT;
SQL
cat > "$WORK/min.sql" <<'SQL'
BEGIN;
UPDATE fr r SET state = 'succeeded', finished_at = now(), worker = NULL, lease = NULL
   FROM unnest(:ids::uuid[], :att::int[]) AS h(id, attempt) WHERE r.project = 'bench' AND r.id = h.id AND r.attempt = h.attempt AND r.state = (SELECT 'running'::text);
WITH c AS (SELECT project, id FROM fr WHERE state = 'queued' ORDER BY created_at LIMIT :batch FOR NO KEY UPDATE SKIP LOCKED),
 u AS (UPDATE fr r SET state = 'running', attempt = r.attempt + 1, worker = 'w' || :client_id, lease = now() + interval '30 s'
   FROM c WHERE r.project = c.project AND r.id = c.id RETURNING r.id, r.attempt)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS att FROM u \gset
COMMIT;
SQL
t=$(( per / b ))
t0=$(date +%s.%N)
pgbench -n -M prepared -c "$c" -j "$c" -t "$t" -D ids='{}' -D att='{}' -D batch="$b" -f "$WORK/$mode.sql" "$PGURL/$DB" > "$WORK/pgbench.out" 2>&1 \
  || { cat "$WORK/pgbench.out" >&2; exit 1; }
t1=$(date +%s.%N)
done=$(psql "$PGURL/$DB" -Atc "SELECT count(*) FROM fr WHERE state = 'succeeded'")
awk -v m="$mode" -v b="$b" -v c="$c" -v d="$done" -v s="$(echo "$t1 - $t0" | bc)" -v la="$(cut -d' ' -f1 /proc/loadavg)" \
  'BEGIN { printf "floor=%s batch=%d clients=%d jobs_done=%d seconds=%.2f jobs_per_sec=%.0f load_avg_1m=%s\n", m, b, c, d, s, d / s, la }'
