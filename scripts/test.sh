#!/usr/bin/env bash
# Runs every check and test of AwoooP on a fresh Debian/Ubuntu machine with Rust:
#   1. makes sure PostgreSQL and Redis answer on 127.0.0.1 (starts them when installed but
#      stopped, installs them with apt-get when missing);
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings (and the release feature set),
#      no import cycles between the modules of a crate (scripts/check-module-cycles.py);
#   3. the whole test suite (cargo nextest when installed, else cargo test);
#   4. schemathesis against the served /openapi.json with a fixed seed, no 5xx allowed
#      (scripts/api-fuzz.sh), and the cargo-fuzz targets for a bounded time (scripts/fuzz.sh);
#   5. the Helm chart checks (scripts/chart-test.sh: helm lint/template, Kubernetes schemas,
#      admission-policy CEL, CRs against their CRDs).
# It also installs the official MCP SDKs the interop tests talk to (Python `mcp` in a venv
# under .tools/venv, TypeScript `@modelcontextprotocol/sdk` under .tools/node, both gitignored)
# and exports AWOOOP_TEST_PYTHON and AWOOOP_TEST_NODE_MODULES for them.
# CI (.ci/run) calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  if ! answers 5432; then
    log "starting PostgreSQL"
    for v in $(ls /etc/postgresql 2>/dev/null); do
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
    for _ in $(seq 1 50); do answers 5432 && break; sleep 0.2; done
  fi
  answers 5432 || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
  # Tests connect over TCP as the postgres superuser. Trust auth (CI image) needs no password;
  # a stock Debian install wants one, so set a known local password when trust is off.
  if [ -z "${DATABASE_URL:-}" ]; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    if command -v psql >/dev/null && ! psql "$DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then
      $SUDO -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null 2>&1 \
        || runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
      export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    fi
  fi
}

ensure_redis() {
  if ! command -v redis-server >/dev/null; then
    log "installing Redis"
    apt_install redis-server
  fi
  if ! answers 6379; then
    log "starting Redis"
    mkdir -p /tmp/awooop-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/awooop-redis --logfile /tmp/awooop-redis/redis.log
    for _ in $(seq 1 50); do answers 6379 && break; sleep 0.1; done
  fi
  answers 6379 || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
}

# The official Python MCP SDK for the MCP interop tests (tests/mcp/, tests/integration/mcp_*.rs):
# `mcp` and its dependencies pinned in tests/mcp/requirements.txt, plus schemathesis for the API
# fuzzing step (tests/fuzz/schemathesis-requirements.txt), from PyPI only. Idempotent: a venv
# built from the same requirements files is reused without touching the network.
ensure_python_mcp() {
  # The channel tests' provider SDKs (line-bot-sdk, slack_sdk, python-telegram-bot) and
  # schemathesis share the venv with the MCP SDK: each requirements file pins its own.
  local venv=.tools/venv req=tests/mcp/requirements.txt req2=tests/channels/requirements.txt fuzz=tests/fuzz/schemathesis-requirements.txt marker
  marker="$(cat "$req" "$req2" "$fuzz" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$marker" ] || [ ! -x "$venv/bin/python" ]; then
    log "installing the Python MCP SDK and the chat provider SDKs ($req, $req2) into $venv"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install python3-venv
    fi
    rm -rf "$venv"
    mkdir -p .tools
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" -r "$req2" -r "$fuzz"
    echo "$marker" > "$venv/.requirements-sha256"
  fi
  AWOOOP_TEST_PYTHON="$(pwd)/$venv/bin/python"
  export AWOOOP_TEST_PYTHON
}

# The official TypeScript MCP SDK (tests/mcp/package.json, versions pinned in its lock file,
# from the npm registry) into .tools/node, for the TypeScript client interop test. Idempotent
# like the venv. Needs Node.js and npm (installed with apt-get when missing).
ensure_node_mcp() {
  local dir=.tools/node marker
  marker="$(cat tests/mcp/package.json tests/mcp/package-lock.json | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$dir/.lock-sha256" 2>/dev/null)" != "$marker" ] || [ ! -d "$dir/node_modules/@modelcontextprotocol/sdk" ]; then
    log "installing the TypeScript MCP SDK (tests/mcp/package-lock.json) into $dir"
    if ! command -v npm >/dev/null; then
      apt_install nodejs npm
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    cp tests/mcp/package.json tests/mcp/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$marker" > "$dir/.lock-sha256"
  fi
  AWOOOP_TEST_NODE_MODULES="$(pwd)/$dir/node_modules"
  export AWOOOP_TEST_NODE_MODULES
}

# Test databases of this run (`awt_…_r$AWOOOP_TEST_RUN`, tests/integration/support.rs) that exist now.
test_databases() {
  psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'awt\_%\_r$AWOOOP_TEST_RUN'"
}

ensure_postgres
ensure_redis
command -v psql >/dev/null || apt_install postgresql-client
ensure_python_mcp
ensure_node_mcp

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# The release binary is built without the `bench` feature (tests turn it on): lint that too.
log "cargo clippy -p awooop (release features, no bench) -- -D warnings"
cargo clippy --locked -p awooop -- -D warnings

log "no module cycles inside a crate (scripts/check-module-cycles.py)"
python3 scripts/check-module-cycles.py

# The real-API-server tests (tests/integration/apiserver.rs) need kube-apiserver and etcd built
# outside the repository (docs/kubernetes.md); without them they skip in one line each.
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  for d in "$HOME/.cache/awooop/kube-assets" /usr/local/kubebuilder/bin; do
    if [ -x "$d/kube-apiserver" ] && [ -x "$d/etcd" ]; then
      export KUBEBUILDER_ASSETS="$d"
      break
    fi
  done
fi
echo "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-<unset: real-API-server tests skip>}" >&2
# They render the chart's RBAC and admission policies with helm (.tools/bin/helm).
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ ! -x .tools/bin/helm ]; then
  ./scripts/chart-test.sh --install-only
fi

log "tests against PostgreSQL and Redis on 127.0.0.1"
# Every tool a test needs was installed above: a test that still misses one fails instead of
# skipping (tests/integration/support.rs `require_tool`). Skips outside this script land in
# target/awooop-test-skips.log; it is emptied here and summarised after the run.
export AWOOOP_REQUIRE_TOOLS=1
# Tags the databases this run creates (awt_…_r<run>), for the leak check below.
export AWOOOP_TEST_RUN="$$"
SKIP_LOG="${CARGO_TARGET_DIR:-target}/awooop-test-skips.log"
rm -f "$SKIP_LOG"
suite=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --profile ci || suite=$?
else
  cargo test --locked || suite=$?
fi
skipped=0
if [ -s "$SKIP_LOG" ]; then skipped=$(wc -l < "$SKIP_LOG"); fi
echo "skipped: $skipped test(s) for a missing tool"
if [ "$skipped" != 0 ]; then
  sed 's/^/  /' "$SKIP_LOG"
  suite=1
fi
# Every test drops the database it created (tests/README.md): none may be left behind.
leaked="$(test_databases)"
if [ -n "$leaked" ]; then
  echo "test databases left behind by this run:" >&2
  echo "$leaked" | sed 's/^/  /' >&2
  suite=1
fi
[ "$suite" = 0 ] || exit "$suite"

log "schemathesis against /openapi.json, fixed seed, no 5xx (scripts/api-fuzz.sh)"
./scripts/api-fuzz.sh

# The stable seeded harness by default (no nightly toolchain needed, no second instrumented
# build of the crate); FUZZ_ENGINE=auto runs libFuzzer through cargo-fuzz when nightly exists.
log "fuzz targets: redactor and JSON-RPC/HTTP request parsing, bounded (scripts/fuzz.sh)"
FUZZ_ENGINE="${FUZZ_ENGINE:-stable}" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" ./scripts/fuzz.sh

log "Helm chart checks (scripts/chart-test.sh)"
./scripts/chart-test.sh
