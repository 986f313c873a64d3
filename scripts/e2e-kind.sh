#!/usr/bin/env bash
# End-to-end test of AwoooP on a real, throwaway cluster (kind, or k3d with E2E_CLUSTER=k3d).
# For users who have Docker, kind/k3d, kubectl, helm, curl, python3 and openssl; the build
# machines have no Docker, so CI runs scripts/chart-test.sh instead. See docs/kubernetes.md.
#
#   1. docker build the image, create the cluster, load the image into it;
#   2. run PostgreSQL in the cluster (an owner role that is not a superuser), create Secrets;
#   3. helm install the chart, wait for the operator and the API;
#   4. through the API (port-forward, admin token): create a project, register a signing key,
#      draft, sign, publish, approve and activate a Project contract;
#   5. wait until the AgentProject is Ready and carries the activated revision; check that a
#      hand edit is denied by the admission policy and that the worker Deployment exists;
#   6. delete the cluster (E2E_KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_TOOL=${E2E_CLUSTER:-kind}
NAME=${E2E_NAME:-awooop-e2e}
NS=awooop
IMAGE=awooop:e2e
PROJECT=e2e
TIMEOUT=${E2E_TIMEOUT:-180s}
PORT=${E2E_PORT:-18080}

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "e2e: FAIL: $*" >&2; exit 1; }
for t in docker "$CLUSTER_TOOL" kubectl helm curl python3 openssl; do
  command -v "$t" >/dev/null || die "$t is not installed"
done

cleanup() {
  if [ -n "${PF_PID:-}" ]; then kill "$PF_PID" 2>/dev/null || true; fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    log "keeping cluster $NAME (E2E_KEEP=1)"
  elif [ "$CLUSTER_TOOL" = k3d ]; then
    k3d cluster delete "$NAME" >/dev/null 2>&1 || true
  else
    kind delete cluster --name "$NAME" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "building $IMAGE"
docker build -t "$IMAGE" .

log "creating $CLUSTER_TOOL cluster $NAME"
if [ "$CLUSTER_TOOL" = k3d ]; then
  k3d cluster create "$NAME" --wait
  k3d image import "$IMAGE" -c "$NAME"
else
  kind create cluster --name "$NAME" --wait 120s
  kind load docker-image "$IMAGE" --name "$NAME"
fi
kubectl create namespace "$NS"

log "PostgreSQL in the cluster"
PGPASS=$(openssl rand -hex 16)
OWNERPASS=$(openssl rand -hex 16)
kubectl -n "$NS" create secret generic e2e-postgres --from-literal=password="$PGPASS"
kubectl -n "$NS" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:16
          env:
            - name: POSTGRES_PASSWORD
              valueFrom: {secretKeyRef: {name: e2e-postgres, key: password}}
          ports: [{containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -U, postgres]}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec:
  selector: {app: postgres}
  ports: [{port: 5432}]
EOF
kubectl -n "$NS" rollout status deploy/postgres --timeout="$TIMEOUT"
# The owner is not a superuser (superusers bypass row-level security); CREATEROLE lets the
# first migration create awooop_app.
for _ in $(seq 1 30); do
  kubectl -n "$NS" exec deploy/postgres -- psql -U postgres -qc "SELECT 1" >/dev/null 2>&1 && break
  sleep 2
done
kubectl -n "$NS" exec deploy/postgres -- psql -U postgres -v ON_ERROR_STOP=1 -q \
  -c "CREATE ROLE awooop_owner LOGIN CREATEROLE PASSWORD '$OWNERPASS'" \
  -c "CREATE DATABASE awooop OWNER awooop_owner"

log "Secrets"
ADMIN_TOKEN=$(openssl rand -hex 32)
KEY_B64=$(openssl rand -base64 32)
kubectl -n "$NS" create secret generic awooop-database \
  --from-literal=database-url="postgres://awooop_owner:$OWNERPASS@postgres.$NS.svc:5432/awooop"
kubectl -n "$NS" create secret generic awooop-admin --from-literal=admin-token="$ADMIN_TOKEN"
kubectl -n "$NS" create secret generic awooop-gateway-key --from-literal=gateway-key="$(openssl rand -hex 32)"
kubectl -n "$NS" create secret generic awooop-keyring --from-literal=keyring="e2e:$KEY_B64"

log "helm install"
helm install awooop charts/awooop -n "$NS" --wait --timeout "${TIMEOUT}" \
  --set image.repository=awooop --set image.tag=e2e --set image.pullPolicy=Never \
  --set api.keyring.existingSecret=awooop-keyring \
  --set operator.replicas=1 --set api.replicas=1
kubectl -n "$NS" rollout status deploy/awooop-operator --timeout="$TIMEOUT"
kubectl -n "$NS" rollout status deploy/awooop-api --timeout="$TIMEOUT"

log "API through a port-forward"
kubectl -n "$NS" port-forward svc/awooop-api "$PORT:80" >/dev/null 2>&1 &
PF_PID=$!
API=http://127.0.0.1:$PORT
for _ in $(seq 1 30); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$API/readyz" >/dev/null || die "the API does not answer /readyz"

# call METHOD PATH [JSON]: the admin token, in project $PROJECT; prints the JSON answer.
call() {
  curl -fsS -X "$1" "$API$2" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H "X-Awooop-Project: $PROJECT" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

log "project $PROJECT: create, signing key, draft, sign, publish, approve, activate"
call POST /v1/control/projects "{\"project_id\":\"$PROJECT\",\"display_name\":\"E2E\",\"required_approvals\":1}" >/dev/null
call POST /v1/control/signing-keys '{"key_id":"e2e"}' >/dev/null
BODY='{"display_name":"E2E","data_boundary":{"default_class":"internal","allowed_classes":["internal"]},
"budget":{"period":"day","token_limit":1000},"acl":{},"approval":{"required_approvals":1,"ttl_seconds":3600},
"environments":["dev"],"workers":{"min_replicas":1,"max_replicas":2,"runs_per_replica":10}}'
DRAFT=$(call POST /v1/control/drafts "{\"kind\":\"project\",\"name\":\"$PROJECT\",\"body\":$BODY}")
DRAFT_ID=$(echo "$DRAFT" | field draft_id)
NEXT=$(echo "$DRAFT" | field next_revision)
SIG=$(echo "$DRAFT" | KEY_B64=$KEY_B64 python3 -c '
import base64, hashlib, hmac, json, os, sys
msg = json.load(sys.stdin)["signing_message"].encode()
print(hmac.new(base64.b64decode(os.environ["KEY_B64"]), msg, hashlib.sha256).hexdigest())')
REV_ID=$(call POST "/v1/control/drafts/$DRAFT_ID/publish" \
  "{\"revision\":$NEXT,\"key_id\":\"e2e\",\"signature\":\"$SIG\"}" | field revision_id)
call POST "/v1/control/revisions/$REV_ID/approvals" >/dev/null
call POST "/v1/control/revisions/$REV_ID/activate" >/dev/null
echo "activated project revision $REV_ID" >&2

log "waiting for AgentProject/$PROJECT to be Ready"
for _ in $(seq 1 60); do
  kubectl -n "$NS" get agentproject "$PROJECT" >/dev/null 2>&1 && break
  sleep 2
done
kubectl -n "$NS" wait --for=condition=Ready "agentproject/$PROJECT" --timeout="$TIMEOUT"
GOT=$(kubectl -n "$NS" get agentproject "$PROJECT" -o jsonpath='{.spec.revisionId}')
[ "$GOT" = "$REV_ID" ] || die "AgentProject carries revision $GOT, activated $REV_ID"
kubectl -n "$NS" get deploy -l "app.kubernetes.io/managed-by=awooop-operator,awooop.dev/project=$PROJECT" \
  -o name | grep -q . || die "no worker Deployment for $PROJECT"

log "a hand edit is denied by the admission policy"
if kubectl -n "$NS" label agentproject "$PROJECT" edited=by-hand 2>"/tmp/e2e-deny.$$"; then
  die "a hand edit of AgentProject/$PROJECT was accepted"
fi
grep -q "projected from PostgreSQL" "/tmp/e2e-deny.$$" || die "unexpected denial: $(cat /tmp/e2e-deny.$$)"
rm -f "/tmp/e2e-deny.$$"

kubectl -n "$NS" get agentprojects,mcpgrants,deployments
echo "e2e: 1 passed, 0 failed"
