#!/usr/bin/env bash
# schemathesis against the served /openapi.json of a fresh `awooop up`, with a fixed seed:
# any 5xx answer fails (check `not_a_server_error`). Run by scripts/test.sh after the suite.
#
#   scripts/api-fuzz.sh            # seed 20261128, 25 examples per operation
#   SCHEMATHESIS_SEED=7 SCHEMATHESIS_MAX_EXAMPLES=200 scripts/api-fuzz.sh
#
# Needs: the debug binary (built here when missing), schemathesis in .tools/venv (installed by
# scripts/test.sh from tests/fuzz/schemathesis-requirements.txt; AWOOOP_TEST_PYTHON points at
# that venv's python) and PostgreSQL: with DATABASE_URL (as scripts/test.sh exports) a fresh
# database `awooop_api_fuzz_<pid>` is created for the run and dropped afterwards (psql);
# without it `awooop up` finds or starts its own. Requests carry the generated admin token and
# `X-Awooop-Project: awoooi` (the project `up` seeds), so the fuzzer reaches every handler, not
# only the 401 path.
set -euo pipefail
cd "$(dirname "$0")/.."

SEED="${SCHEMATHESIS_SEED:-20261128}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
PY="${AWOOOP_TEST_PYTHON:-$(pwd)/.tools/venv/bin/python}"
ST="$(dirname "$PY")/schemathesis"
[ -x "$ST" ] || { echo "schemathesis not found next to $PY: run scripts/test.sh" >&2; exit 1; }
BIN="${AWOOOP_BIN:-${CARGO_TARGET_DIR:-target}/debug/awooop}"
if [ ! -x "$BIN" ]; then cargo build --locked --bin awooop; fi

STATE="$(mktemp -d /tmp/awooop-api-fuzz.XXXXXX)"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# A private cluster runs as an unprivileged user when we are root: it must reach the folder.
chmod 755 "$STATE"
DB_ENV=()
FUZZ_DB=""
if [ -n "${DATABASE_URL:-}" ] && command -v psql >/dev/null; then
  FUZZ_DB="awooop_api_fuzz_$$"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $FUZZ_DB" >/dev/null
  DB_ENV=(DATABASE_URL="${DATABASE_URL%/*}/$FUZZ_DB")
fi
env -u DATABASE_URL -u AWOOOP_APP_DATABASE_URL -u REDIS_URL -u KUBECONFIG -u AWOOOP_ADMIN_TOKEN \
  HOME="$STATE" AWOOOP_STATE_DIR="$STATE" "${DB_ENV[@]}" \
  "$BIN" up --listen "127.0.0.1:$PORT" >"$STATE/up.log" 2>&1 &
UP=$!
cleanup() {
  kill -TERM "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
  if [ -n "$FUZZ_DB" ]; then psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $FUZZ_DB WITH (FORCE)" >/dev/null || true; fi
  rm -rf "$STATE"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && [ -s "$STATE/admin-token" ]; then break; fi
  kill -0 "$UP" 2>/dev/null || { echo "awooop up exited:" >&2; cat "$STATE/up.log" >&2; exit 1; }
  sleep 0.2
done
TOKEN="$(tr -d '\n' <"$STATE/admin-token")"

echo "schemathesis $("$ST" --version | awk '{print $NF}') against http://127.0.0.1:$PORT/openapi.json (seed $SEED, $MAX_EXAMPLES examples)" >&2
status=0
"$ST" run "http://127.0.0.1:$PORT/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --header "X-Awooop-Project: awoooi" \
  --checks not_a_server_error \
  --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --request-timeout 30 \
  --no-color || status=$?
if [ "$status" != 0 ]; then
  echo "== awooop up log (last 40 lines)" >&2
  tail -40 "$STATE/up.log" >&2
fi
exit "$status"
