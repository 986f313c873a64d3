#!/usr/bin/env python3
"""Offline checks of the rendered awooop chart, run by scripts/chart-test.sh in .tools/venv.

Subcommands (each prints one line per finding and exits non-zero on any failure):

  vap RENDERED.yaml [--exempt USER ...]
      Evaluates the rendered ValidatingAdmissionPolicy + Binding over sample admission requests
      with a CEL implementation (cel-python) and the API server's matching rules (resource
      rules, objectSelector on the old or new object, the binding's namespaceSelector): the
      operator's ServiceAccount and the exempt users may write projected objects, nobody else.
  env-flags RENDERED.yaml HELP_DIR [--extra NAME ...]
      Every env entry of every Deployment has a comment naming the `awooop` flag it sets, and
      `awooop <subcommand> --help` (saved as HELP_DIR/<subcommand>.txt) lists that flag with
      that env var, or with NAME where the chart sets NAME_FILE (master secrets as files). A missing help file is a failure: the chart would run a subcommand (or
      flags) this build cannot be checked against.
  crd-schemas CRD_DIR OUT_DIR [KIND...]
      Writes each CRD's openAPIV3Schema as a JSON Schema file OUT_DIR/<Kind>.json (for
      check-jsonschema); fails on a CRD without an object schema or a listed KIND without a CRD.
  kinds RENDERED.yaml KIND...
      The rendered output contains exactly the listed kinds (with counts as KIND=N).
  argocd-health LUA_FILE
      Runs the Argo CD health check (Lua 5.1, Argo CD's dialect) over sample AgentProjects.
  dockerfile DOCKERFILE DOCKERIGNORE
      The image build: every COPY source exists and is not excluded by .dockerignore, cargo
      builds with --locked, the last stage is not the build image and runs as a non-root UID.
  servicemonitor RENDERED.yaml
      The ServiceMonitor (a Prometheus Operator CR, not in kubernetes-validate's bundled
      schemas) selects the chart's Services and scrapes ports they expose.
"""

import json
import os
import re
import sys
from collections import Counter

import celpy
import yaml


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def fail(msg):
    print(f"FAIL {msg}")
    return 1


# --- ValidatingAdmissionPolicy -----------------------------------------------------------------


def labels_match(selector, obj):
    if obj is None:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def rule_matches(rule, req):
    group, resource, sub = req["resource"]["group"], req["resource"]["resource"], req.get("subResource", "")
    full = f"{resource}/{sub}" if sub else resource
    return (
        (group in rule["apiGroups"] or "*" in rule["apiGroups"])
        and (req["operation"] in rule["operations"] or "*" in rule["operations"])
        and (full in rule["resources"] or "*" in rule["resources"])
    )


class Policy:
    def __init__(self, rendered, suffix="-projected"):
        objs = docs(rendered)
        self.policy = next(o for o in objs if o["kind"] == "ValidatingAdmissionPolicy" and o["metadata"]["name"].endswith(suffix))
        self.binding = next(o for o in objs if o["kind"] == "ValidatingAdmissionPolicyBinding" and o["metadata"]["name"].endswith(suffix))
        assert self.binding["spec"]["policyName"] == self.policy["metadata"]["name"]
        self.env = celpy.Environment()
        self.conditions = [
            self.env.program(self.env.compile(c["expression"])) for c in self.policy["spec"].get("matchConditions", [])
        ]
        self.validations = [
            (
                self.env.program(self.env.compile(v["expression"])),
                self.env.program(self.env.compile(v["messageExpression"])) if "messageExpression" in v else None,
            )
            for v in self.policy["spec"]["validations"]
        ]

    def matches(self, req, obj, old):
        mc = self.policy["spec"]["matchConstraints"]
        if not any(rule_matches(r, req) for r in mc["resourceRules"]):
            return False
        sel = mc.get("objectSelector")
        if sel and not (labels_match(sel, obj) or labels_match(sel, old)):
            return False
        ns_sel = self.binding["spec"].get("matchResources", {}).get("namespaceSelector")
        if ns_sel:
            ns = {"metadata": {"labels": {"kubernetes.io/metadata.name": req["namespace"]}}}
            if not labels_match(ns_sel, ns):
                return False
        return True

    def admit(self, req, obj=None, old=None):
        """(allowed, message) as the API server would decide with validationActions Deny."""
        if not self.matches(req, obj, old):
            return True, "not matched"
        activation = {
            "request": celpy.json_to_cel(req),
            "object": celpy.json_to_cel(obj),
            "oldObject": celpy.json_to_cel(old),
        }
        # matchConditions: all must hold for the policy to apply.
        if not all(bool(c.evaluate(activation)) for c in self.conditions):
            return True, "not matched (matchConditions)"
        for program, message in self.validations:
            result = program.evaluate(activation)
            if not isinstance(result, celpy.celtypes.BoolType):
                return False, f"non-boolean result {result!r}"  # the API server fails closed
            if not result:
                return False, str(message.evaluate(activation)) if message else "denied"
        return True, "allowed"


def request(op, user, group, resource, name, namespace, sub=""):
    return {
        "operation": op,
        "userInfo": {"username": user, "groups": ["system:authenticated"]},
        "resource": {"group": group, "version": "v1" if group == "apps" else "v1alpha1", "resource": resource},
        "subResource": sub,
        "name": name,
        "namespace": namespace,
        "dryRun": False,
    }


def obj(kind, name, namespace, managed_by):
    labels = {"app.kubernetes.io/part-of": "awooop"}
    if managed_by:
        labels["app.kubernetes.io/managed-by"] = managed_by
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def check_vap(rendered, exempt):
    p = Policy(rendered)
    ns = p.binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    expr = p.policy["spec"]["validations"][0]["expression"]
    m = re.search(r'"system:serviceaccount:([^":]+):([^"]+)"', expr)
    if not m or m.group(1) != ns:
        return fail(f"vap: the operator's ServiceAccount in namespace {ns} is not in the expression: {expr}")
    operator = f"system:serviceaccount:{ns}:{m.group(2)}"
    gc = "system:serviceaccount:kube-system:generic-garbage-collector"
    alice = "alice@example.com"
    ap = obj("AgentProject", "awoooi", ns, "awooop-operator")
    grant = obj("McpGrant", "awoooi-triage", ns, "awooop-operator")
    worker = obj("Deployment", "awoooi-worker", ns, "awooop-operator")
    unlabelled_worker = obj("Deployment", "awoooi-worker", ns, None)
    helm_deploy = obj("Deployment", "awooop-api", ns, "Helm")
    other_ns_ap = obj("AgentProject", "awoooi", "elsewhere", "awooop-operator")
    G, A = "awooop.dev", "apps"
    # (description, request, object, oldObject, expected allowed)
    cases = [
        ("operator updates an AgentProject", request("UPDATE", operator, G, "agentprojects", "awoooi", ns), ap, ap, True),
        ("operator deletes a retired McpGrant", request("DELETE", operator, G, "mcpgrants", "awoooi-triage", ns), None, grant, True),
        ("operator writes AgentProject status", request("UPDATE", operator, G, "agentprojects", "awoooi", ns, "status"), ap, ap, True),
        ("operator creates a worker Deployment", request("CREATE", operator, A, "deployments", "awoooi-worker", ns), worker, None, True),
        ("a user edits an AgentProject", request("UPDATE", alice, G, "agentprojects", "awoooi", ns), ap, ap, False),
        ("a user deletes an McpGrant", request("DELETE", alice, G, "mcpgrants", "awoooi-triage", ns), None, grant, False),
        ("a user edits AgentProject status", request("UPDATE", alice, G, "agentprojects", "awoooi", ns, "status"), ap, ap, False),
        ("a user creates an McpGrant labelled as projected", request("CREATE", alice, G, "mcpgrants", "x-y", ns), grant, None, False),
        ("a user scales a worker Deployment by editing it", request("UPDATE", alice, A, "deployments", "awoooi-worker", ns), worker, worker, False),
        ("a user strips the managed-by label", request("UPDATE", alice, A, "deployments", "awoooi-worker", ns), unlabelled_worker, worker, False),
        ("a user deletes a worker Deployment", request("DELETE", alice, A, "deployments", "awoooi-worker", ns), None, worker, False),
        ("a user forges a worker Deployment", request("CREATE", alice, A, "deployments", "fake-worker", ns), worker, None, False),
        ("another namespace's operator account", request("UPDATE", f"system:serviceaccount:other:{m.group(2)}", G, "agentprojects", "awoooi", ns), ap, ap, False),
        ("the garbage collector deletes a worker Deployment", request("DELETE", gc, A, "deployments", "awoooi-worker", ns), None, worker, True),
        ("the Deployment controller annotates a worker Deployment", request("UPDATE", "system:serviceaccount:kube-system:deployment-controller", A, "deployments", "awoooi-worker", ns), worker, worker, True),
        ("a user edits the chart's own API Deployment", request("UPDATE", alice, A, "deployments", "awooop-api", ns), helm_deploy, helm_deploy, True),
        ("a user edits an AgentProject in another namespace", request("UPDATE", alice, G, "agentprojects", "awoooi", "elsewhere"), other_ns_ap, other_ns_ap, True),
        ("a user edits an unlabelled Deployment", request("UPDATE", alice, A, "deployments", "awoooi-worker", ns), unlabelled_worker, unlabelled_worker, True),
    ]
    for user in exempt:
        cases.append((f"exempt user {user} deletes an AgentProject", request("DELETE", user, G, "agentprojects", "awoooi", ns), None, ap, True))
    # deployments/scale: the Scale object has no labels; the second policy matches worker names.
    scale = Policy(rendered, "-worker-scale")
    scale_obj = {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "awooop-worker-awoooi", "namespace": ns}}
    scale_cases = [
        ("a user scales a worker Deployment (kubectl scale)", request("UPDATE", alice, A, "deployments", "awooop-worker-awoooi", ns, "scale"), scale_obj, scale_obj, False),
        ("the operator's account scales a worker Deployment", request("UPDATE", operator, A, "deployments", "awooop-worker-awoooi", ns, "scale"), scale_obj, scale_obj, True),
        ("a user scales the chart's API Deployment", request("UPDATE", alice, A, "deployments", "awooop-api", ns, "scale"), scale_obj, scale_obj, True),
        ("a user scales a worker Deployment in another namespace", request("UPDATE", alice, A, "deployments", "awooop-worker-awoooi", "elsewhere", "scale"), scale_obj, scale_obj, True),
    ]
    failures = 0
    for desc, req, new, old, expected, pol in [(*c, scale) for c in scale_cases] + [(*c, p) for c in cases]:
        allowed, message = pol.admit(req, new, old)
        if allowed != expected:
            failures += fail(f"vap: {desc}: allowed={allowed}, expected {expected} ({message})")
        elif not allowed and (req["resource"]["resource"] not in message or req["userInfo"]["username"] not in message):
            failures += fail(f"vap: {desc}: denial message does not name the resource and user: {message}")
        else:
            print(f"ok   vap: {desc}: {'allowed' if allowed else 'denied: ' + message}")
    return failures


# --- env vars ↔ flags --------------------------------------------------------------------------


def parse_help(text):
    """flag -> env var (or None) from clap's `--help` output."""
    flags, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            flags[current] = None
        if current:
            e = re.search(r"\[env: ([A-Z0-9_]+)", line)
            if e:
                flags[current] = e.group(1)
    return flags


def check_env_flags(rendered, help_dir, extra):
    with open(rendered) as f:
        text = f.read()
    failures = 0
    for doc in text.split("\n---\n"):
        if not re.search(r"^kind: Deployment$", doc, re.M):
            continue
        name = re.search(r"^  name: (\S+)$", doc, re.M).group(1)
        sub = re.search(r'^\s+args: \["([a-z-]+)"', doc, re.M).group(1)
        help_file = os.path.join(help_dir, f"{sub}.txt")
        flags = None
        if os.path.exists(help_file):
            with open(help_file) as f:
                flags = parse_help(f.read())
        else:
            failures += fail(f"env-flags {name}: no `awooop {sub} --help` capture in {help_dir}: cannot check the chart's env vars against its flags")
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^\s+- name: ([A-Z][A-Z0-9_]*)$", line)
            if not m or m.group(1) in extra:
                continue
            var = m.group(1)
            comment = lines[i - 1].strip()
            if not comment.startswith("#"):
                failures += fail(f"env-flags {name}: {var} has no comment naming its flag")
                continue
            fm = re.match(r"# --([a-z0-9-]+)", comment)
            if not fm:
                if not comment.startswith("# no flag:"):
                    failures += fail(f"env-flags {name}: {var}: comment is neither `# --flag` nor `# no flag: why`")
                continue
            if flags is None:
                continue
            flag = fm.group(1)
            if flag not in flags:
                failures += fail(f"env-flags {name}: `awooop {sub}` has no --{flag} (set by {var})")
            elif flags[flag] != var and not (var.endswith("_FILE") and flags[flag] == var[: -len("_FILE")]):
                failures += fail(f"env-flags {name}: --{flag} reads env {flags[flag]}, the chart sets {var}")
            else:
                print(f"ok   env-flags {name}: {var} = awooop {sub} --{flag}")
    return failures


# --- CRD schemas, kinds, ServiceMonitor ----------------------------------------------------------


def crd_schemas(crd_dir, out_dir, expected=()):
    """Extract each CRD's openAPIV3Schema to OUT_DIR/<Kind>.json; fails when a CRD has no
    schema or an expected kind is missing."""
    os.makedirs(out_dir, exist_ok=True)
    failures = 0
    written = set()
    for fname in sorted(os.listdir(crd_dir)):
        for crd in docs(os.path.join(crd_dir, fname)):
            kind = crd["spec"]["names"]["kind"]
            schema = crd["spec"]["versions"][0].get("schema", {}).get("openAPIV3Schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                failures += fail(f"crd-schemas: {kind} in {fname} has no object openAPIV3Schema")
                continue
            with open(os.path.join(out_dir, f"{kind}.json"), "w") as f:
                json.dump(schema, f, indent=1)
            written.add(kind)
            print(f"ok   crd-schemas: {kind}")
    for kind in expected:
        if kind not in written:
            failures += fail(f"crd-schemas: no CRD for {kind} in {crd_dir}")
    return failures


def check_kinds(rendered, expected):
    got = Counter(d["kind"] for d in docs(rendered))
    want = Counter()
    for e in expected:
        k, _, n = e.partition("=")
        want[k] = int(n or 1)
    if got != want:
        return fail(f"kinds: rendered {dict(sorted(got.items()))}, expected {dict(sorted(want.items()))}")
    print(f"ok   kinds: {dict(sorted(got.items()))}")
    return 0


def check_servicemonitor(rendered):
    objs = docs(rendered)
    sm = next(o for o in objs if o["kind"] == "ServiceMonitor")
    sel = sm["spec"]["selector"]
    services = [o for o in objs if o["kind"] == "Service" and labels_match(sel, o)]
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    failures = 0
    if not services:
        failures += fail("servicemonitor: selects no Service of the chart")
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in ports:
            failures += fail(f"servicemonitor: port {ep['port']} is on no selected Service ({ports})")
        if not re.match(r"^[0-9]+(ms|s|m|h)$", ep.get("interval", "")):
            failures += fail(f"servicemonitor: bad interval {ep.get('interval')}")
    if failures == 0:
        print(f"ok   servicemonitor: {len(services)} services, endpoints {[e['port'] for e in sm['spec']['endpoints']]}")
    return failures


def check_webhooks(rendered):
    """The webhook Ingress and HTTPRoute route only /v1/webhooks/ to the API Service."""
    objs = docs(rendered)
    api = [o["metadata"]["name"] for o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-api")]
    failures, seen = 0, 0
    for o in objs:
        if o["kind"] == "Ingress":
            for rule in o["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    seen += 1
                    if (p["path"], p["pathType"]) != ("/v1/webhooks/", "Prefix"):
                        failures += fail(f"webhooks: Ingress exposes {p['pathType']} {p['path']}")
                    if p["backend"]["service"]["name"] not in api:
                        failures += fail(f"webhooks: Ingress backend {p['backend']['service']['name']} is not the API Service")
            if not o["spec"].get("tls"):
                failures += fail("webhooks: Ingress without TLS in the all-on values")
        if o["kind"] == "HTTPRoute":
            for rule in o["spec"]["rules"]:
                for m in rule["matches"]:
                    seen += 1
                    if m.get("path") != {"type": "PathPrefix", "value": "/v1/webhooks/"}:
                        failures += fail(f"webhooks: HTTPRoute matches {m}")
                if any(b["name"] not in api for b in rule["backendRefs"]):
                    failures += fail("webhooks: HTTPRoute backend is not the API Service")
    if seen < 2:
        failures += fail("webhooks: the all-on render has no webhook Ingress and HTTPRoute")
    if failures == 0:
        print(f"ok   webhooks: {seen} routes, all /v1/webhooks/ to {api}")
    return failures


def check_argocd_health(lua_file):
    from lupa import lua51

    with open(lua_file) as f:
        body = f.read()

    def cond(status, reason="R", message="m"):
        return {"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}

    def ap(generation=1, status=None):
        o = {"apiVersion": "awooop.dev/v1alpha1", "kind": "AgentProject", "metadata": {"name": "a", "generation": generation}, "spec": {}}
        if status is not None:
            o["status"] = status
        return o

    cases = [
        ("no status yet", ap(), "Progressing"),
        ("Ready=True", ap(2, {"observedGeneration": 2, "conditions": [{"type": "Projected", "status": "True"}, cond("True")]}), "Healthy"),
        ("Ready=False", ap(1, {"observedGeneration": 1, "conditions": [cond("False", "SecretsMissing", "k8s-mcp/token")]}), "Degraded"),
        ("Ready=Unknown", ap(1, {"observedGeneration": 1, "conditions": [cond("Unknown")]}), "Progressing"),
        ("status of an older generation", ap(3, {"observedGeneration": 2, "conditions": [cond("True")]}), "Progressing"),
        ("conditions without Ready", ap(1, {"observedGeneration": 1, "conditions": [{"type": "Projected", "status": "True"}]}), "Progressing"),
    ]
    failures = 0
    for desc, obj, want in cases:
        lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        to_lua = lambda v: lua.table_from(
            {k: to_lua(x) for k, x in v.items()} if isinstance(v, dict) else [to_lua(x) for x in v], recursive=False
        ) if isinstance(v, (dict, list)) else v
        lua.globals().obj = to_lua(obj)
        hs = lua.execute(body)
        got = hs["status"]
        if got != want:
            failures += fail(f"argocd-health: {desc}: {got}, expected {want} ({hs['message']})")
        else:
            print(f"ok   argocd-health: {desc}: {got} ({hs['message']})")
    return failures


def check_dockerfile(dockerfile, dockerignore):
    import fnmatch

    with open(dockerignore) as f:
        ignored = [l.strip().strip("/").rstrip("/") for l in f if l.strip() and not l.startswith("#")]
    with open(dockerfile) as f:
        text = f.read().replace("\\\n", " ")
    lines = [l.strip() for l in text.splitlines()]
    stages = [l for l in lines if l.upper().startswith("FROM ")]
    failures = 0
    for l in lines:
        if not l.upper().startswith("COPY ") or "--from=" in l:
            continue
        for src in l.split()[1:-1]:
            src = src.rstrip("/")
            if not os.path.exists(os.path.join(os.path.dirname(dockerfile) or ".", src)):
                failures += fail(f"dockerfile: COPY source {src} does not exist")
            for pat in ignored:
                if fnmatch.fnmatch(src, pat) or src.startswith(pat + "/"):
                    failures += fail(f"dockerfile: COPY source {src} is excluded by .dockerignore ({pat})")
    if not any("cargo build" in l and "--locked" in l for l in lines):
        failures += fail("dockerfile: no `cargo build ... --locked`")
    if len(stages) < 2 or stages[-1].split()[1] == stages[0].split()[1]:
        failures += fail(f"dockerfile: not a multi-stage build with a separate runtime image: {stages}")
    last_stage = text[text.rfind(stages[-1]):] if stages else ""
    user = re.findall(r"^USER\s+(\S+)", last_stage, re.M)
    if not user or user[-1].split(":")[0] in ("0", "root"):
        failures += fail(f"dockerfile: the runtime stage does not switch to a non-root user ({user})")
    if failures == 0:
        print(f"ok   dockerfile: {len(stages)} stages, runtime {stages[-1].split()[1]}, USER {user[-1]}")
    return failures


def main(argv):
    cmd, args = argv[1], argv[2:]

    def opt(name):
        vals = []
        while name in args:
            i = args.index(name)
            vals.append(args[i + 1])
            del args[i : i + 2]
        return vals

    if cmd == "vap":
        exempt = opt("--exempt")
        return check_vap(args[0], exempt)
    if cmd == "env-flags":
        extra = opt("--extra")
        return check_env_flags(args[0], args[1], set(extra))
    if cmd == "crd-schemas":
        return crd_schemas(args[0], args[1], args[2:])
    if cmd == "kinds":
        return check_kinds(args[0], args[1:])
    if cmd == "argocd-health":
        return check_argocd_health(args[0])
    if cmd == "dockerfile":
        return check_dockerfile(args[0], args[1])
    if cmd == "servicemonitor":
        return check_servicemonitor(args[0])
    if cmd == "webhooks":
        return check_webhooks(args[0])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv) else 0)
