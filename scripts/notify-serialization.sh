#!/usr/bin/env bash
# What a NOTIFY inside a writing transaction costs concurrent writers (migration 0071,
# docs/benchmarks.md "channels (session 8)"). PostgreSQL commits every transaction that has
# called NOTIFY under one cluster-wide lock held through its WAL flush (async.c,
# PreCommit_Notify), so such transactions commit one at a time.
#
#   scripts/notify-serialization.sh [CLIENTS] [SECONDS] [ROUNDS]   (default: 8 8 2)
#
# pgbench, in a scratch database of the same server, alternating three one-row write
# transactions: `plain` (BEGIN; INSERT; COMMIT), `notify` (the same with a pg_notify before the
# COMMIT: what run creation did before 0071) and `deferred` (the plain transaction, then the
# notice in an autocommit statement with synchronous_commit off: what the hub and
# RunService::create do now, one extra statement per transaction where the platform sends one
# per batch). Prints transactions per second and mean latency of each.
set -euo pipefail
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
c=${1:-8}; secs=${2:-8}; rounds=${3:-2}
DB=awooop_notify_ser_$$
WORK=$(mktemp -d)
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
psql "$PGURL/$DB" -qc "CREATE TABLE t (id bigserial PRIMARY KEY, v text NOT NULL)"
cat >"$WORK/plain.sql" <<'SQL'
BEGIN;
INSERT INTO t (v) VALUES ('x');
COMMIT;
SQL
cat >"$WORK/notify.sql" <<'SQL'
BEGIN;
INSERT INTO t (v) VALUES ('x');
SELECT pg_notify('awooop_bench', 'x');
COMMIT;
SQL
cat >"$WORK/deferred.sql" <<'SQL'
BEGIN;
INSERT INTO t (v) VALUES ('x');
COMMIT;
SET synchronous_commit = off;
SELECT pg_notify('awooop_bench', 'x');
SET synchronous_commit = on;
SQL
for r in $(seq "$rounds"); do
  for s in plain notify deferred; do
    out=$(pgbench "$PGURL/$DB" -n -c "$c" -j 2 -T "$secs" -f "$WORK/$s.sql" 2>&1)
    tps=$(grep -oP 'tps = \K[0-9.]+' <<<"$out" | head -1)
    lat=$(grep -oP 'latency average = \K[0-9.]+' <<<"$out")
    echo "round=$r script=$s clients=$c tps=$tps latency_ms=$lat load_avg_1m=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
