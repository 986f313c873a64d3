#!/usr/bin/env python3
"""Generate a Python client from AwoooP's /openapi.json with openapi-python-client (pinned in
tests/client/requirements.txt), then create a run with it and read the run back.

Usage: python_client.py OPENAPI_JSON BASE_URL TOKEN PROJECT AGENT
Prints {"run_id", "created_state", "state", "agent"} as JSON.
"""
import importlib, inspect, json, pathlib, subprocess, sys, tempfile

spec, base, token, project, agent = sys.argv[1:6]
out = pathlib.Path(tempfile.mkdtemp(prefix="awooop-pyclient-"))
gen = pathlib.Path(sys.executable).parent / "openapi-python-client"
subprocess.run([str(gen), "generate", "--path", spec, "--output-path", str(out / "awooop_generated"),
                "--meta", "none", "--overwrite"], check=True, stdout=sys.stderr)
sys.path.insert(0, str(out))
pkg = importlib.import_module("awooop_generated")
create = importlib.import_module("awooop_generated.api.default.post_v1_platform_runs")
get = importlib.import_module("awooop_generated.api.default.get_v1_platform_runs_id")
models = importlib.import_module("awooop_generated.models")

client = pkg.AuthenticatedClient(base_url=base, token=token, headers={"X-Awooop-Project": project})
body = models.CreateRun.from_dict({"agent": agent, "input": {"text": "from python"}})
r = create.sync_detailed(client=client, body=body)
assert r.status_code == 202, (r.status_code, r.content)
accepted = json.loads(r.content)
id_param = next(p for p in inspect.signature(get.sync_detailed).parameters if p.startswith("id"))
g = get.sync_detailed(client=client, **{id_param: accepted["run_id"]})
assert g.status_code == 200, (g.status_code, g.content)
run = json.loads(g.content)
print(json.dumps({"run_id": run["run_id"], "created_state": accepted["state"],
                  "state": run["state"], "agent": run["agent"]}))
