#!/usr/bin/env bash
# The peer of `awooop bench runs`: graphile-worker 0.17.3 on a scratch database of the same
# PostgreSQL, N no-op jobs, its documented throughput settings (local queue 500, batched
# completion with completeJobBatchDelay 0), 10 concurrent. Prints one key=value line.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench-runs-peer.sh [JOBS] [CONCURRENCY]
#
# `awooop bench runs --peer` calls this and prints the ratio. Needs node >= 18 and npm; the
# package is installed once into .tools/graphile (gitignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/graphile"
base="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
jobs="${1:-20000}"
conc="${2:-10}"
if [ ! -f "$dir/node_modules/graphile-worker/package.json" ] ||
   ! grep -q '"version": "0.17.3"' "$dir/node_modules/graphile-worker/package.json"; then
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"awooop-bench-graphile","private":true}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --silent graphile-worker@0.17.3 >&2)
fi
db="awooop_peer_graphile_$$"
# The scratch database lives on the same server as DATABASE_URL's database.
# PEER_SSLMODE (set by `awooop bench runs --peer` to match its own connections: `no-verify` for
# TLS without certificate checks, `disable`): node-postgres uses TLS only when told to.
scratch="${base%/*}/$db${PEER_SSLMODE:+?sslmode=$PEER_SSLMODE}"
psql -q "$base" -c "CREATE DATABASE $db" >/dev/null
trap 'psql -q "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
GRAPHILE_DIR="$dir" PEER_DATABASE_URL="$scratch" PEER_JOBS="$jobs" PEER_CONCURRENCY="$conc" \
  node "$root/scripts/bench-runs-peer.mjs"
