//! The web console (`/console`): served by a real `awooop up`, driven in a real headless
//! Chromium (Debian's `chromium` through playwright-core, tests/console/console.mjs): sign in,
//! follow a run to completion, approve it, see a gateway denial appear, and a key of another
//! project that sees none of it. Plus the read-only views' tenancy and the page's headers
//! without a browser.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;
use awooop::auth::{KeyBinding, Role};
use awooop::contracts::ContractKind;
use awooop::tenancy;

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// playwright-core's `node_modules` (`AWOOOP_TEST_CONSOLE_NODE_MODULES`, else
/// `.tools/console/node_modules` from scripts/test.sh, else `tests/console/node_modules`),
/// Chromium (`AWOOOP_TEST_CHROMIUM`, else /usr/bin/chromium) and node on PATH.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let modules = std::env::var_os("AWOOOP_TEST_CONSOLE_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            [".tools/console/node_modules", "tests/console/node_modules"]
                .iter()
                .map(|p| repo().join(p))
                .find(|p| p.join("playwright-core").exists())
        })
        .filter(|p| p.join("playwright-core").exists());
    let chromium = std::env::var_os("AWOOOP_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require_tool(
        "Chromium and playwright-core for the console browser test",
        "run scripts/test.sh (apt-get install chromium; npm ci in tests/console), or set \
         AWOOOP_TEST_CHROMIUM and AWOOOP_TEST_CONSOLE_NODE_MODULES",
        modules
            .filter(|_| node && chromium.exists())
            .map(|m| (m, chromium)),
    )
}

/// `awooop up` on a free port against the test database; killed on drop.
struct Up {
    child: std::process::Child,
    port: u16,
    state: PathBuf,
}

impl Up {
    async fn start(t: &TestDb) -> Self {
        let state = std::env::temp_dir().join(format!("awooop-console-{}", t.name));
        let port = free_port();
        let mut child = Command::new(BIN)
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &t.url)
            .env("AWOOOP_STATE_DIR", &state)
            .env_remove("REDIS_URL")
            .env_remove("KUBECONFIG")
            .env("HOME", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "awooop up did not listen");
            assert!(child.try_wait().unwrap().is_none(), "awooop up exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Up { child, port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn wait_state(http: &reqwest::Client, up: &Up, key: &str, run: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, r) = call(
            http,
            reqwest::Method::GET,
            format!("{}/v1/platform/runs/{run}", up.url()),
            key,
            None,
        )
        .await;
        if r["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "run {run} never {state}: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two projects with a runner/approver key each; alpha has an agent that pauses for approval
/// and one whose tool call the gateway refuses (the tool is in no gateway contract).
struct World {
    key_a: String,
    key_b: String,
}

async fn world(t: &TestDb) -> World {
    let cp = t.control(awooop::coord::Coord::none());
    let alpha = project(&cp, "alpha", 1).await;
    let beta = project(&cp, "beta", 1).await;
    tenancy::scope(alpha.clone(), async {
        let triage = json!({
            "display_name": "Triage", "context_domain": "infra", "tools": [],
            "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 1000, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [
                {"type": "output", "key": "look", "template": "looked at {{input.service}}"},
                {"type": "wait_approval", "key": "ok", "reason": "restart {{input.service}}?"},
                {"type": "output", "key": "done", "template": "restarted, approved by {{steps.ok.approved_by}}"}
            ]}
        });
        let r = publish(&cp, ContractKind::Agent, "triage", triage).await;
        approve_and_activate(&cp, r, 1).await;
        let prober = json!({
            "display_name": "Prober", "context_domain": "infra", "tools": ["k8s__delete_pod"],
            "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 1000, "timeout_seconds": 60},
            "executor": {"type": "scripted", "steps": [
                {"type": "tool_call", "key": "rm", "tool": "k8s__delete_pod", "arguments": {"name": "web-1"}}
            ]}
        });
        let r = publish(&cp, ContractKind::Agent, "prober", prober).await;
        approve_and_activate(&cp, r, 1).await;
        // A second revision of triage, published but not approved: the console approves and
        // activates it.
        let mut next = cp.active(ContractKind::Agent, "triage").await.unwrap().body;
        next["display_name"] = json!("Triage v2");
        publish(&cp, ContractKind::Agent, "triage", next).await;
    })
    .await;
    let roles = || vec![Role::Reader, Role::Runner, Role::Approver, Role::Activator];
    let binding = || {
        Some(KeyBinding {
            agents: vec!["*".into()],
            environments: vec!["*".into()],
        })
    };
    let key_a = cp
        .create_api_key_bound(&admin(), &alpha, "alice", roles(), binding())
        .await
        .unwrap()
        .token;
    let key_b = cp
        .create_api_key_bound(&admin(), &beta, "bob", roles(), binding())
        .await
        .unwrap()
        .token;
    World { key_a, key_b }
}

async fn start_run(http: &reqwest::Client, up: &Up, key: &str, agent: &str) -> String {
    let (s, r) = call(
        http,
        reqwest::Method::POST,
        format!("{}/v1/platform/runs", up.url()),
        key,
        Some(json!({"agent": agent, "input": {"service": "web"}})),
    )
    .await;
    assert_eq!(s, 202, "{r}");
    r["run_id"].as_str().unwrap().to_string()
}

async fn get(http: &reqwest::Client, up: &Up, path: &str, key: &str) -> (u16, Value) {
    call(
        http,
        reqwest::Method::GET,
        format!("{}{path}", up.url()),
        key,
        None,
    )
    .await
}

fn client() -> reqwest::Client {
    awooop::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// Without a browser: the page and its assets come with the strict policy, the views answer
/// for the caller's project only, and a run's timeline names its steps, approval and denial.
#[tokio::test]
async fn console_is_served_with_a_strict_policy_and_views_are_tenant_scoped() {
    let t = TestDb::new().await;
    let w = world(&t).await;
    let up = Up::start(&t).await;
    let http = client();

    for (path, ty) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/assets/app.js", "text/javascript"),
        ("/console/assets/app.css", "text/css"),
    ] {
        let r = http
            .get(format!("{}{path}", up.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ty),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    // The shell references only its own assets: nothing from another origin, no inline script.
    let html = http
        .get(format!("{}/console", up.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"src="/console/assets/app.js""#), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");

    let waiting = start_run(&http, &up, &w.key_a, "triage").await;
    let denied = start_run(&http, &up, &w.key_a, "prober").await;
    wait_state(&http, &up, &w.key_a, &waiting, "waiting_approval").await;
    let failed = wait_state(&http, &up, &w.key_a, &denied, "failed").await;

    let (s, tl) = get(
        &http,
        &up,
        &format!("/v1/platform/runs/{waiting}/timeline"),
        &w.key_a,
    )
    .await;
    assert_eq!(s, 200, "{tl}");
    assert_eq!(tl["state"], "waiting_approval");
    let events = tl["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "step"
            && e["detail"]["status"] == "waiting"
            && e["detail"]["output"]["reason"] == "restart web?"),
        "{tl}"
    );
    assert!(events.iter().any(|e| e["title"] == "run.create"), "{tl}");
    let (s, tl) = get(
        &http,
        &up,
        &format!("/v1/platform/runs/{denied}/timeline"),
        &w.key_a,
    )
    .await;
    assert_eq!(s, 200);
    let tool = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "tool")
        .unwrap_or_else(|| panic!("no tool call in {tl}"));
    assert_eq!(tool["detail"]["decision"], "denied", "{tl}");
    assert_eq!(
        tool["detail"]["code"], failed["error_code"],
        "{tl} {failed}"
    );

    let (s, gw) = get(&http, &up, "/v1/platform/gateway", &w.key_a).await;
    assert_eq!(s, 200, "{gw}");
    assert_eq!(
        gw["denials_by_code"][0]["code"], failed["error_code"],
        "{gw}"
    );
    assert_eq!(gw["denials_by_code"][0]["count"], 1, "{gw}");
    let (s, cs) = get(&http, &up, "/v1/control/contracts", &w.key_a).await;
    assert_eq!(s, 200, "{cs}");
    let names: Vec<&str> = cs["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prober", "triage"], "{cs}");
    let triage = &cs["contracts"][1];
    assert_eq!(
        (&triage["active_revision"], &triage["latest_revision"]),
        (&json!(1), &json!(2)),
        "{cs}"
    );
    assert_eq!(triage["pending"][0]["revision"], 2, "{cs}");
    assert_eq!(triage["pending"][0]["approvers"], json!([]), "{cs}");
    assert_eq!(cs["required_approvals"], 1);
    for path in ["/v1/platform/budgets", "/v1/platform/channels"] {
        let (s, v) = get(&http, &up, path, &w.key_a).await;
        assert_eq!(s, 200, "{path}: {v}");
    }

    // Project beta's key: alpha's run is not found, and every view is empty.
    let (s, e) = get(
        &http,
        &up,
        &format!("/v1/platform/runs/{waiting}/timeline"),
        &w.key_b,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("E-RUN-001")), "{e}");
    let (_, gw) = get(&http, &up, "/v1/platform/gateway", &w.key_b).await;
    assert_eq!(gw["denials_by_code"], json!([]), "{gw}");
    assert_eq!(gw["recent_calls"], json!([]), "{gw}");
    let (_, cs) = get(&http, &up, "/v1/control/contracts", &w.key_b).await;
    assert_eq!(cs["contracts"], json!([]), "{cs}");
    // No credential: the views are closed like the rest of the API.
    let r = http
        .get(format!("{}/v1/platform/gateway", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(up);
    t.cleanup().await;
}

/// The whole console in Chromium: sign in, follow a run to completion across an approval
/// made in the console, watch a denial appear, and the cross-tenant case.
#[tokio::test]
async fn console_in_a_real_browser() {
    let Some((modules, chromium)) = browser_tools() else {
        return;
    };
    let t = TestDb::new().await;
    let w = world(&t).await;
    let up = Up::start(&t).await;
    let http = client();
    let waiting = start_run(&http, &up, &w.key_a, "triage").await;
    let denied = start_run(&http, &up, &w.key_a, "prober").await;
    wait_state(&http, &up, &w.key_a, &waiting, "waiting_approval").await;
    wait_state(&http, &up, &w.key_a, &denied, "failed").await;

    let shots = std::env::var_os("AWOOOP_CONSOLE_SCREENSHOTS");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("tests/console/console.mjs"))
        .env("CONSOLE_URL", up.url())
        .env("KEY_A", &w.key_a)
        .env("KEY_B", &w.key_b)
        .env("RUN_WAIT", &waiting)
        .env("RUN_DENIED", &denied)
        .env("DENIED_AGENT", "prober")
        .env("AWOOOP_TEST_CONSOLE_NODE_MODULES", &modules)
        .env("AWOOOP_TEST_CHROMIUM", &chromium)
        .kill_on_drop(true);
    if let Some(dir) = shots {
        cmd.env("CONSOLE_SHOTS", dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the browser run timed out")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "console.mjs failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);

    // What the browser did, seen from the API: the run was approved by the key's principal
    // and finished; the approval is in the audit log under the run's trace id.
    let done = wait_state(&http, &up, &w.key_a, &waiting, "succeeded").await;
    assert_eq!(
        done["output"]["result"], "restarted, approved by alice",
        "{done}"
    );
    assert_eq!(report["trace"], done["trace_id"]);
    drop(up);
    t.cleanup().await;
}
