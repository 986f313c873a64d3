#!/usr/bin/env bash
# Runs every check and test of AwoooP on a fresh Debian/Ubuntu machine with Rust:
#   0. preflight: checks every tool the run relies on (Rust >= the workspace's rust-version with
#      rustfmt and clippy, a C compiler, Node.js >= 20 with npm, python3 with venv, PostgreSQL,
#      Redis, and root or sudo when something must be installed) and prints in ONE line what is
#      missing and how to get it, before any slow step (`scripts/test.sh --preflight` runs only
#      this);
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
# It never changes a password on its own: when PostgreSQL refuses the passwordless local
# superuser, it stops and says what to set (DATABASE_URL, or AWOOOP_TEST_SET_PG_PASSWORD=1 to
# let it set the local postgres user's password to `postgres`, announced when done).
# Every stage's duration is printed as it ends and summed up at the end (also on failure).
# For the web console it installs Debian's chromium and playwright-core (tests/console, into
# .tools/console) and checks the committed console bundle against its locked sources
# (scripts/console-build.sh --check).
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

# --- stage timings ------------------------------------------------------------------------
TIMINGS=()
STAGE=""
STAGE_START=0
stage() {
  stage_end
  STAGE="$1"
  STAGE_START=$SECONDS
  log "$1"
}
stage_end() {
  if [ -n "$STAGE" ]; then
    local took=$((SECONDS - STAGE_START))
    TIMINGS+=("$(printf '%4dm%02ds  %s' $((took / 60)) $((took % 60)) "$STAGE")")
    printf '   (%s took %dm%02ds)\n' "$STAGE" $((took / 60)) $((took % 60)) >&2
    STAGE=""
  fi
}
report_timings() {
  local rc=$?
  stage_end
  if [ "${#TIMINGS[@]}" -gt 0 ]; then
    printf '\n== stage timings (total %dm%02ds)%s\n' $((SECONDS / 60)) $((SECONDS % 60)) \
      "$([ "$rc" = 0 ] || echo ", failed with exit code $rc")" >&2
    printf '%s\n' "${TIMINGS[@]}" >&2
  fi
}
trap report_timings EXIT

# --- preflight ------------------------------------------------------------------------------
# version_ge A B: A >= B for dotted versions.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# What apt would install for a package (empty when apt or the package is unknown).
apt_candidate() {
  command -v apt-cache >/dev/null || return 0
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

preflight() {
  local missing=() install=() can_install=0
  if { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; } \
     && command -v apt-get >/dev/null; then
    can_install=1
  fi
  # Rust: the workspace's rust-version, with rustfmt and clippy (rustup, never apt: Debian's
  # rustc is older than the dependencies need).
  local want have
  want="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
  if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    missing+=("Rust >= $want (curl https://sh.rustup.rs -sSf | sh)")
  else
    have="$(rustc --version | awk '{print $2}')"
    version_ge "$have" "$want" || missing+=("Rust >= $want, have $have (rustup update stable)")
    cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
    cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")
  fi
  # A C compiler and linker (build scripts of ring, aws-lc and friends).
  if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    if [ "$can_install" = 1 ]; then install+=(build-essential); else missing+=("a C compiler (apt-get install build-essential)"); fi
  fi
  # Node.js >= 20 with npm (the TypeScript MCP SDK). Debian 12's own nodejs is 18: apt helps
  # only where its candidate is new enough.
  local node_hint="Node.js >= 20 with npm (https://nodejs.org/en/download, e.g. NodeSource or nvm)"
  if command -v node >/dev/null; then
    have="$(node --version | tr -d v)"
    version_ge "$have" 20 || missing+=("$node_hint, have $have")
    command -v npm >/dev/null || missing+=("npm (apt-get install npm, or with Node.js from nodejs.org)")
  else
    local cand; cand="$(apt_candidate nodejs)"
    if [ "$can_install" = 1 ] && [ -n "$cand" ] && version_ge "${cand#*:}" 20; then
      install+=(nodejs npm)
    else
      missing+=("$node_hint")
    fi
  fi
  # python3 with venv (the Python SDKs the interop tests use live in .tools/venv).
  if ! command -v python3 >/dev/null; then
    if [ "$can_install" = 1 ]; then install+=(python3 python3-venv); else missing+=("python3 with venv (apt-get install python3 python3-venv)"); fi
  elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$can_install" = 1 ]; then install+=(python3-venv); else missing+=("python3-venv (apt-get install python3-venv)"); fi
  fi
  # PostgreSQL and Redis: answering on 127.0.0.1, or installed (started below), or installable.
  if ! answers 5432 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$can_install" = 1 ]; then install+=(postgresql); else missing+=("PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql)"); fi
  fi
  if ! answers 6379 && ! command -v redis-server >/dev/null; then
    if [ "$can_install" = 1 ]; then install+=(redis-server); else missing+=("Redis on 127.0.0.1:6379 (apt-get install redis-server)"); fi
  fi
  if ! command -v psql >/dev/null; then
    if [ "$can_install" = 1 ]; then install+=(postgresql-client); else missing+=("psql (apt-get install postgresql-client)"); fi
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    local IFS=';'
    echo "missing: ${missing[*]}" | sed 's/;/; /g' >&2
    return 1
  fi
  if [ "${#install[@]}" -gt 0 ]; then
    echo "preflight: will install with apt-get: ${install[*]}" >&2
  else
    echo "preflight: every tool is present" >&2
  fi
  cargo nextest --version >/dev/null 2>&1 \
    || echo "preflight: cargo-nextest not found: the suite runs with cargo test (slower; cargo install cargo-nextest --locked)" >&2
}

stage "preflight: tools this run relies on"
preflight
if [ "${1:-}" = "--preflight" ]; then
  exit 0
fi

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
  # Tests connect over TCP as a superuser. Trust auth (the CI image) needs no password; a
  # stock Debian install wants one. A password is never changed without being asked to.
  if [ -z "${DATABASE_URL:-}" ]; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    if command -v psql >/dev/null && ! psql "$DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then
      if [ "${AWOOOP_TEST_SET_PG_PASSWORD:-}" != 1 ]; then
        echo "PostgreSQL on 127.0.0.1:5432 refuses the passwordless superuser 'postgres': set DATABASE_URL=postgres://USER:PASSWORD@127.0.0.1:5432/postgres (a superuser), or rerun with AWOOOP_TEST_SET_PG_PASSWORD=1 to let this script set the local postgres user's password to 'postgres'" >&2
        exit 1
      fi
      echo "AWOOOP_TEST_SET_PG_PASSWORD=1: setting the password of the local PostgreSQL user 'postgres' to 'postgres'" >&2
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
  # openapi-python-client (tests/client/requirements.txt) generates the Python client test's client.
  local venv=.tools/venv req=tests/mcp/requirements.txt req2=tests/channels/requirements.txt fuzz=tests/fuzz/schemathesis-requirements.txt req3=tests/client/requirements.txt marker
  marker="$(cat "$req" "$req2" "$fuzz" "$req3" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$marker" ] || [ ! -x "$venv/bin/python" ]; then
    log "installing the Python MCP SDK and the chat provider SDKs ($req, $req2) into $venv"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install python3-venv
    fi
    rm -rf "$venv"
    mkdir -p .tools
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" -r "$req2" -r "$fuzz" -r "$req3"
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

# The web console's browser test (tests/integration/console.rs): Debian's Chromium (apt) driven
# by playwright-core (tests/console/package-lock.json, npm registry) from .tools/console. The
# console bundle itself is checked against its locked sources by scripts/console-build.sh.
ensure_console_browser() {
  local dir=.tools/console marker
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Chromium for the console browser test"
    apt_install chromium
  fi
  marker="$(cat tests/console/package.json tests/console/package-lock.json | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$dir/.lock-sha256" 2>/dev/null)" != "$marker" ] || [ ! -d "$dir/node_modules/playwright-core" ]; then
    log "installing playwright-core (tests/console/package-lock.json) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp tests/console/package.json tests/console/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$marker" > "$dir/.lock-sha256"
  fi
  AWOOOP_TEST_CONSOLE_NODE_MODULES="$(pwd)/$dir/node_modules"
  AWOOOP_TEST_CHROMIUM=/usr/bin/chromium
  export AWOOOP_TEST_CONSOLE_NODE_MODULES AWOOOP_TEST_CHROMIUM
}

# Test databases of this run (`awt_…_r$AWOOOP_TEST_RUN`, tests/integration/support.rs) that exist now.
test_databases() {
  psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'awt\_%\_r$AWOOOP_TEST_RUN'"
}

stage "PostgreSQL, Redis and the SDKs the tests use"
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
  apt_install build-essential
fi
ensure_postgres
ensure_redis
command -v psql >/dev/null || apt_install postgresql-client
ensure_python_mcp
ensure_node_mcp
ensure_console_browser

stage "web console bundle matches its locked sources (scripts/console-build.sh --check)"
./scripts/console-build.sh --check

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# The release binary is built without the `bench` feature (tests turn it on): lint that too.
stage "cargo clippy -p awooop (release features, no bench) -- -D warnings"
cargo clippy --locked -p awooop -- -D warnings

stage "no module cycles inside a crate (scripts/check-module-cycles.py)"
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

stage "tests against PostgreSQL and Redis on 127.0.0.1"
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

stage "schemathesis against /openapi.json, fixed seed, no 5xx (scripts/api-fuzz.sh)"
./scripts/api-fuzz.sh

# The stable seeded harness by default (no nightly toolchain needed, no second instrumented
# build of the crate); FUZZ_ENGINE=auto runs libFuzzer through cargo-fuzz when nightly exists.
stage "fuzz targets: redactor and JSON-RPC/HTTP request parsing, bounded (scripts/fuzz.sh)"
FUZZ_ENGINE="${FUZZ_ENGINE:-stable}" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" ./scripts/fuzz.sh

stage "Helm chart checks (scripts/chart-test.sh)"
./scripts/chart-test.sh
