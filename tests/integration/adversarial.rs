//! The adversarial suite, part A (issue 11): a hostile tenant with only its own project's
//! roles, acting through the public interfaces (contracts through the `awooop` CLI, tool calls
//! through `/mcp` of a real `awooop serve` process, model calls through the provider proxy).
//! Each test fails on the code before the fix:
//!
//! * `tenant_cannot_supply_a_stdio_program`: the original finding's contract (`python3 -c`) is
//!   refused at draft; naming an unregistered catalog entry is refused at publish.
//! * `catalog_children_cannot_read_the_platform_or_another_tenant`: a catalog program with a
//!   file-reading tool (like the reference filesystem server) is asked by tenant A to read
//!   `/proc/<parent>/environ`, `/proc/<B's child>/environ` and B's credential file: all fail
//!   (per-tenant uid); and `awooop serve` keeps no master secret in its own environment.
//! * `mcp_upstreams_on_loopback_metadata_or_private_names_are_refused`: loopback and metadata
//!   literals, and a name that resolves to loopback, are refused with E-EGRESS-001 unless the
//!   administrator allowed that project an explicit CIDR.
//! * `model_provider_base_urls_obey_the_egress_policy_and_redirects_are_not_followed`.
//! * `tenant_uids_are_distinct_stable_and_audited`: the uid allocation the isolation rests on.
//! * `serve_runs_on_the_runtime_url_alone_given_as_a_file`: the pods' configuration (no owner
//!   URL, secrets as files) works, and keeps the URL out of the environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

/// The system interpreter (Debian's python3): every uid may run it, unlike a per-user
/// installation under a 0700 home folder.
const PYTHON3: &str = "/usr/bin/python3";

/// A tiny MCP server over stdio (stdlib Python): `read` returns a file's content or the
/// exception's name, `whoami` its pid, parent pid and uid. What an administrator might
/// register as a "filesystem" tool, and what the original finding ran as `python3 -c`.
const PROBE: &str = r#"
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    meth = m.get("method")
    resp = {"jsonrpc": "2.0", "id": m["id"]}
    if meth == "initialize":
        resp["result"] = {"protocolVersion": m["params"].get("protocolVersion", "2025-06-18"),
                          "capabilities": {"tools": {}}, "serverInfo": {"name": "probe", "version": "1"}}
    elif meth == "tools/call":
        a = m["params"].get("arguments") or {}
        t = m["params"]["name"]
        if t == "read":
            try:
                out = {"data": open(a["path"], "rb").read().decode("latin-1")}
            except Exception as e:
                out = {"error": type(e).__name__}
        else:
            out = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid()}
        resp["result"] = {"content": [{"type": "text", "text": json.dumps(out)}], "structuredContent": out}
    else:
        resp["error"] = {"code": -32601, "message": "unknown method"}
    sys.stdout.write(json.dumps(resp) + "\n")
    sys.stdout.flush()
"#;

/// The platform through its binary: CLI commands against the test database.
struct Cli {
    t: TestDb,
    state: PathBuf,
}

impl Cli {
    async fn new() -> Self {
        let t = TestDb::new().await;
        let state = std::env::temp_dir().join(format!("awooop-adv-{}", t.name));
        std::fs::create_dir_all(&state).unwrap();
        Self { t, state }
    }

    /// Run `awooop ARGS` (exit code, stdout JSON or Null, stderr JSON or text).
    fn run(&self, args: &[&str]) -> (i32, Value, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &self.t.url)
            .env("AWOOOP_STATE_DIR", &self.state)
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "awooop {args:?}: {err}");
        out
    }

    /// The error code of a command that must fail with exit code 2.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let (code, _, err) = self.run(args);
        assert_eq!(code, 2, "awooop {args:?} should fail: {err}");
        let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
        v["code"].as_str().unwrap().to_string()
    }

    /// A tenant with one required approval and a signing key `k1`.
    fn tenant(&self, id: &str) {
        self.ok(&["project", "create", id, "--required-approvals", "1"]);
        self.ok(&["signing-key", "create", "--project", id, "--key-id", "k1"]);
    }

    fn write(&self, name: &str, body: &Value) -> String {
        let p = self.state.join(name);
        std::fs::write(&p, body.to_string()).unwrap();
        p.display().to_string()
    }

    /// Draft → publish → approve → activate, as the tenant's own principals.
    fn activate(&self, project: &str, kind: &str, name: &str, body: &Value) {
        let file = self.write(&format!("{project}-{kind}-{name}.json"), body);
        let d = self.ok(&[
            "contract",
            "draft",
            "--project",
            project,
            "--kind",
            kind,
            "--name",
            name,
            &file,
        ]);
        let draft = d["draft_id"].as_str().unwrap().to_string();
        let r = self.ok(&[
            "contract",
            "publish",
            "--project",
            project,
            "--draft",
            &draft,
            "--key-id",
            "k1",
        ]);
        let rev = r["revision_id"].as_str().unwrap().to_string();
        self.ok(&[
            "contract",
            "approve",
            "--project",
            project,
            "--revision",
            &rev,
            "--as",
            "alice",
        ]);
        self.ok(&[
            "contract",
            "activate",
            "--project",
            project,
            "--revision",
            &rev,
        ]);
    }

    async fn done(self) {
        let _ = std::fs::remove_dir_all(&self.state);
        self.t.cleanup().await;
    }
}

fn agent(tools: &[String]) -> Value {
    json!({
        "display_name": "Hostile", "context_domain": "infra", "tools": tools,
        "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 1000, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "hi"}]}
    })
}

/// An MCP Gateway contract: `providers` as given, every tool read-only in `dev`, all granted
/// to agent `hostile`. Returns (contract, exposed tool names).
fn gateway(
    providers: Value,
    tools: &[(&str, &str)],
    credential_refs: Value,
) -> (Value, Vec<String>) {
    let defs: Vec<Value> = tools
        .iter()
        .map(|(p, n)| {
            json!({"provider": p, "name": n, "risk": "read_only", "environments": ["dev"],
                             "input_schema": {"type": "object"}})
        })
        .collect();
    let exposed: Vec<String> = tools.iter().map(|(p, n)| format!("{p}__{n}")).collect();
    (
        json!({"credential_refs": credential_refs, "providers": providers, "tools": defs,
               "grants": [{"agent": "hostile", "tools": exposed, "environments": ["dev"]}]}),
        exposed,
    )
}

#[tokio::test]
async fn tenant_cannot_supply_a_stdio_program() {
    let c = Cli::new().await;
    c.tenant("mallory");
    // The original finding: the platform would start the tenant's own program.
    let (evil, _) = gateway(
        json!([{"name": "fs", "transport": {"type": "stdio", "command": "python3",
                "args": ["-c", "print(open('/proc/%d/environ' % __import__('os').getppid()).read())"]}}]),
        &[("fs", "read")],
        json!([]),
    );
    let file = c.write("evil.json", &evil);
    assert_eq!(
        c.fails(&[
            "contract",
            "draft",
            "--project",
            "mallory",
            "--kind",
            "mcp_gateway",
            "--name",
            "default",
            &file
        ]),
        "E-SCHEMA-001",
        "a tenant must not be able to name a command"
    );
    // Both an entry and a command: still refused (unknown fields are denied).
    let (both, _) = gateway(
        json!([{"name": "fs", "transport": {"type": "stdio", "entry": "fs", "command": "/bin/sh"}}]),
        &[("fs", "read")],
        json!([]),
    );
    let file = c.write("both.json", &both);
    assert_eq!(
        c.fails(&[
            "contract",
            "draft",
            "--project",
            "mallory",
            "--kind",
            "mcp_gateway",
            "--name",
            "default",
            &file
        ]),
        "E-SCHEMA-001"
    );
    // An entry the administrator never registered: refused at publish.
    let (unknown, _) = gateway(
        json!([{"name": "fs", "transport": {"type": "stdio", "entry": "not-registered"}}]),
        &[("fs", "read")],
        json!([]),
    );
    let file = c.write("unknown.json", &unknown);
    let d = c.ok(&[
        "contract",
        "draft",
        "--project",
        "mallory",
        "--kind",
        "mcp_gateway",
        "--name",
        "default",
        &file,
    ]);
    let draft = d["draft_id"].as_str().unwrap().to_string();
    assert_eq!(
        c.fails(&[
            "contract",
            "publish",
            "--project",
            "mallory",
            "--draft",
            &draft,
            "--key-id",
            "k1"
        ]),
        "E-CATALOG-001"
    );
    // A registered entry, but a credential into a variable the entry does not allow
    // (LD_PRELOAD-style tricks stay with the administrator).
    c.ok(&[
        "catalog",
        "add",
        "--name",
        "fs",
        "--command",
        PYTHON3,
        "--arg",
        "-c",
        "--arg",
        PROBE,
        "--env",
        "FS_TOKEN",
    ]);
    let (wrong_var, _) = gateway(
        json!([{"name": "fs", "transport": {"type": "stdio", "entry": "fs"},
                "credentials": [{"credential": "k", "inject": {"type": "env", "var": "OTHER_VAR"}}]}]),
        &[("fs", "read")],
        json!([{"name": "k", "source": {"file": {"path": "/nonexistent/k"}}}]),
    );
    let file = c.write("wrong-var.json", &wrong_var);
    let d = c.ok(&[
        "contract",
        "draft",
        "--project",
        "mallory",
        "--kind",
        "mcp_gateway",
        "--name",
        "default",
        &file,
    ]);
    let draft = d["draft_id"].as_str().unwrap().to_string();
    assert_eq!(
        c.fails(&[
            "contract",
            "publish",
            "--project",
            "mallory",
            "--draft",
            &draft,
            "--key-id",
            "k1"
        ]),
        "E-CATALOG-001"
    );
    // The administrator's own input is checked too.
    assert_eq!(
        c.fails(&[
            "catalog",
            "add",
            "--name",
            "x",
            "--command",
            "python3",
            "--env",
            "LD_PRELOAD"
        ]),
        "E-CATALOG-002"
    );
    let list = c.ok(&["catalog", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    c.done().await;
}

/// `awooop serve` as a process, with its master secrets given the two supported ways.
struct Serve {
    child: std::process::Child,
    port: u16,
    gateway_key: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_client() -> reqwest::Client {
    awooop::tls::install_crypto_provider();
    reqwest::Client::new()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn serve(c: &Cli, admin_token_file: &Path, cred_dir: &Path) -> Serve {
    let port = free_port();
    let gateway_key = format!("adv-gateway-key-{}", uuid::Uuid::new_v4().simple());
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        // As environment (scrubbed at start) ...
        .env("DATABASE_URL", &c.t.url)
        .env("AWOOOP_GATEWAY_KEY", &gateway_key)
        // ... and as a file.
        .env("AWOOOP_ADMIN_TOKEN_FILE", admin_token_file)
        .env("AWOOOP_STATE_DIR", &c.state)
        .env("AWOOOP_GATEWAY_CREDENTIAL_DIR", cred_dir)
        .env("AWOOOP_GATEWAY_CACHE_TTL_MS", "0")
        .env("AWOOOP_GATEWAY_RUN_LIVENESS_TTL_MS", "0")
        .env_remove("REDIS_URL")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        port,
        gateway_key,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = http_client();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "awooop serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s
}

/// An MCP client session on `/mcp` with a per-run token the CLI mints for (project, hostile).
struct Mcp {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
}

impl Mcp {
    async fn connect(c: &Cli, s: &Serve, project: &str) -> Self {
        let out = Command::new(BIN)
            .args([
                "token",
                "mint",
                "--project",
                project,
                "--agent",
                "hostile",
                "--env",
                "dev",
            ])
            .env("AWOOOP_GATEWAY_KEY", &s.gateway_key)
            .env("AWOOOP_STATE_DIR", &c.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let http = http_client();
        let url = format!("http://127.0.0.1:{}/mcp", s.port);
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "adv", "version": "1"}}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "initialize: {}", r.status());
        let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
        Self {
            http,
            url,
            token,
            session,
        }
    }

    /// `tools/call`: Ok(structuredContent or content) or Err(E-… code).
    async fn call(&self, tool: &str, args: Value) -> Result<Value, String> {
        let r: Value = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": args}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = r.get("error") {
            return Err(e["data"]["code"].as_str().unwrap_or("?").to_string());
        }
        let res = &r["result"];
        assert_ne!(res["isError"], true, "{r}");
        Ok(res
            .get("structuredContent")
            .cloned()
            .unwrap_or_else(|| res["content"].clone()))
    }
}

/// The whole original finding, against `awooop serve` as a process.
#[tokio::test]
async fn catalog_children_cannot_read_the_platform_or_another_tenant() {
    if !awooop::policy::running_as_root() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the per-tenant uid test needs root (or CAP_SETUID/CAP_SETGID) in CI"
        );
        eprintln!("skipping: per-tenant uids need root");
        return;
    }
    let c = Cli::new().await;
    // The administrator registers a program with a file-reading tool.
    c.ok(&[
        "catalog",
        "add",
        "--name",
        "probe",
        "--command",
        PYTHON3,
        "--arg",
        "-c",
        "--arg",
        PROBE,
        "--env",
        "PROBE_TOKEN",
    ]);
    let cred_dir = c.state.join("creds");
    let beta_secret = format!("beta-credential-{}", uuid::Uuid::new_v4().simple());
    std::fs::create_dir_all(cred_dir.join("beta")).unwrap();
    let beta_file = cred_dir.join("beta/token");
    std::fs::write(&beta_file, &beta_secret).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&beta_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for (tenant, creds) in [
        ("alpha", json!([])),
        (
            "beta",
            json!([{"name": "tok", "source": {"file": {"path": beta_file.display().to_string()}}}]),
        ),
    ] {
        c.tenant(tenant);
        let injections = if tenant == "beta" {
            json!([{"credential": "tok", "inject": {"type": "env", "var": "PROBE_TOKEN"}}])
        } else {
            json!([])
        };
        let (gw, exposed) = gateway(
            json!([{"name": "fs", "transport": {"type": "stdio", "entry": "probe"}, "credentials": injections}]),
            &[("fs", "read"), ("fs", "whoami")],
            creds,
        );
        c.activate(tenant, "mcp_gateway", "default", &gw);
        c.activate(tenant, "agent", "hostile", &agent(&exposed));
    }
    let admin_file = c.state.join("admin-token");
    let admin_token = format!("adv-admin-token-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&admin_file, format!("{admin_token}\n")).unwrap();
    let s = serve(&c, &admin_file, &cred_dir).await;

    // The platform process keeps no master secret in its environment (given as env or file).
    let environ = std::fs::read(format!("/proc/{}/environ", s.child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for (what, v) in [
        ("DATABASE_URL", c.t.url.as_str()),
        ("AWOOOP_GATEWAY_KEY", s.gateway_key.as_str()),
        ("AWOOOP_ADMIN_TOKEN", admin_token.as_str()),
    ] {
        assert!(
            !environ.contains(v),
            "{what} is still in the environment of awooop serve"
        );
    }
    // ... and the admin token from the file works.
    let r = http_client()
        .get(format!("http://127.0.0.1:{}/v1/control/projects", s.port))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let alpha = Mcp::connect(&c, &s, "alpha").await;
    let beta = Mcp::connect(&c, &s, "beta").await;
    let a = alpha.call("fs__whoami", json!({})).await.unwrap();
    let b = beta.call("fs__whoami", json!({})).await.unwrap();
    let (a_uid, b_uid) = (a["uid"].as_u64().unwrap(), b["uid"].as_u64().unwrap());
    assert_ne!(a_uid, 0, "children must not run as root");
    assert_ne!(a_uid, b_uid, "two tenants' children share a uid");
    assert_eq!(a["ppid"].as_u64().unwrap(), u64::from(s.child.id()), "{a}");

    // Tenant A's child tries the platform's environment, B's child's (which holds B's
    // credential) and B's credential file.
    for path in [
        format!("/proc/{}/environ", a["ppid"]),
        format!("/proc/{}/environ", b["pid"]),
        beta_file.display().to_string(),
    ] {
        let r = alpha.call("fs__read", json!({"path": path})).await.unwrap();
        assert_eq!(r["error"], "PermissionError", "{path}: {r}");
        assert!(!r.to_string().contains(&beta_secret));
    }
    // Control: B's own child does hold B's credential (so the read above had a target), and
    // the gateway redacts it from B's own result.
    let own = beta
        .call(
            "fs__read",
            json!({"path": format!("/proc/{}/environ", b["pid"])}),
        )
        .await
        .unwrap();
    assert!(
        own["data"].is_string(),
        "B cannot read its own child: {own}"
    );
    assert!(!own.to_string().contains(&beta_secret), "{own}");
    drop(s);
    c.done().await;
}

#[tokio::test]
async fn mcp_upstreams_on_loopback_metadata_or_private_names_are_refused() {
    let fx = awooop_testkit::fixture::FixtureServer::start(Default::default())
        .await
        .unwrap();
    let port = fx
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let c = Cli::new().await;
    // alpha: the administrator allowed the *name* localhost only (no CIDR).
    c.tenant("alpha");
    c.ok(&["egress", "allow", "--project", "alpha", "localhost"]);
    let (gw, exposed) = gateway(
        json!([
            {"name": "lo", "transport": {"type": "streamable_http", "url": fx.url()}},
            {"name": "meta", "transport": {"type": "streamable_http", "url": "http://169.254.169.254/latest/mcp"}},
            {"name": "named", "transport": {"type": "streamable_http", "url": format!("http://localhost:{port}/mcp")}},
            {"name": "mapped", "transport": {"type": "streamable_http", "url": format!("http://[::ffff:127.0.0.1]:{port}/mcp")}}
        ]),
        &[
            ("lo", "echo"),
            ("meta", "echo"),
            ("named", "echo"),
            ("mapped", "echo"),
        ],
        json!([]),
    );
    c.activate("alpha", "mcp_gateway", "default", &gw);
    c.activate("alpha", "agent", "hostile", &agent(&exposed));
    // beta: the administrator allowed 127.0.0.1/32 explicitly.
    c.tenant("beta");
    c.ok(&["egress", "allow", "--project", "beta", "127.0.0.1/32"]);
    let (gw, exposed) = gateway(
        json!([{"name": "lo", "transport": {"type": "streamable_http", "url": fx.url()}}]),
        &[("lo", "echo")],
        json!([]),
    );
    c.activate("beta", "mcp_gateway", "default", &gw);
    c.activate("beta", "agent", "hostile", &agent(&exposed));
    let rules = c.ok(&["egress", "list"]);
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");
    assert_eq!(
        c.fails(&["egress", "allow", "--all-projects", "http://x/"]),
        "E-EGRESS-002"
    );

    let admin_file = c.state.join("admin-token");
    std::fs::write(
        &admin_file,
        format!("adv-admin-token-{}", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    let s = serve(&c, &admin_file, &c.state.join("creds")).await;
    let alpha = Mcp::connect(&c, &s, "alpha").await;
    for tool in ["lo__echo", "meta__echo", "named__echo", "mapped__echo"] {
        assert_eq!(
            alpha.call(tool, json!({"text": "x"})).await,
            Err("E-EGRESS-001".to_string()),
            "{tool}"
        );
    }
    assert_eq!(fx.calls(), 0, "a refused call reached the loopback server");
    let beta = Mcp::connect(&c, &s, "beta").await;
    beta.call("lo__echo", json!({"text": "x"})).await.unwrap();
    assert_eq!(fx.calls(), 1);
    drop(s);
    c.done().await;
}

#[tokio::test]
async fn model_provider_base_urls_obey_the_egress_policy_and_redirects_are_not_followed() {
    use awooop::coord::Coord;
    use awooop::model::breaker::{AnomalyConfig, AnomalyCounter};
    use awooop::model::proxy::ProviderProxy;
    use awooop_testkit::double::{ProviderDouble, Reply};

    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "adv-model", 1).await;
    let double = ProviderDouble::start().await.unwrap();
    let redirector = Redirector::start(&double.base_url()).await;
    let proxy = || {
        let anomalies = AnomalyCounter::new(t.db(), Coord::none(), AnomalyConfig::default());
        ProviderProxy::new(t.db(), anomalies, model_creds()).unwrap()
    };
    let chat = |px: ProviderProxy, base_url: String| {
        let p = p.clone();
        async move {
            let pol = model_policy(&base_url);
            awooop::tenancy::scope(p, async move {
                px.chat(&pol, &model_meta(), &model_request(), None).await
            })
            .await
        }
    };
    double.script((0..4).map(|_| Reply::Text("fine".into())));
    // No rule: the tenant's loopback base URL is refused before anything is sent.
    let e = chat(proxy(), double.base_url()).await.unwrap_err();
    assert_eq!(e.code.as_str(), "E-EGRESS-001", "{e:?}");
    assert_eq!(double.requests().len(), 0);
    // The administrator allows 127.0.0.1 for this project: the call goes through.
    awooop::policy::egress_allow(
        &t.db(),
        "test-admin",
        Some("adv-model"),
        "127.0.0.1/32",
        "double",
    )
    .await
    .unwrap();
    chat(proxy(), double.base_url()).await.unwrap();
    assert_eq!(double.requests().len(), 1);
    // Userinfo that makes a reader see another host is refused, even to an allowed address.
    let tricked = double
        .base_url()
        .replace("http://", "http://api.openai.com@");
    let e = chat(proxy(), tricked).await.unwrap_err();
    assert_eq!(e.code.as_str(), "E-EGRESS-001", "{e:?}");
    // An allowed provider answering with a redirect: not followed.
    let e = chat(proxy(), redirector.base_url.clone())
        .await
        .unwrap_err();
    assert_ne!(e.code.as_str(), "E-INTERNAL-001", "{e:?}");
    assert_eq!(double.requests().len(), 1, "the redirect was followed");
    assert!(redirector.hits() >= 1);
    t.cleanup().await;
}

fn model_creds() -> std::sync::Arc<awooop::gateway::credentials::CredentialResolver> {
    std::sync::Arc::new(awooop::gateway::credentials::CredentialResolver::new(
        None,
        Default::default(),
        Duration::ZERO,
    ))
}

fn model_policy(base_url: &str) -> awooop::model::policy::EffectivePolicy {
    use awooop::contracts::{BudgetPeriod, DataClass, ProviderApi};
    use awooop::model::policy::{BudgetPolicy, EffectivePolicy, ScopeLimit, Target};
    EffectivePolicy {
        agent: "bot".into(),
        route: "default".into(),
        data_class: DataClass::Internal,
        targets: vec![Target {
            provider: "p".into(),
            api: ProviderApi::OpenaiChat,
            base_url: base_url.into(),
            api_key: None,
            model: "double-model".into(),
            max_output_tokens: 50,
            timeout_ms: 5_000,
            input_micros_per_mtok: 0,
            output_micros_per_mtok: 0,
        }],
        gated_out: vec![],
        retries: 0,
        budget: BudgetPolicy {
            period: BudgetPeriod::Day,
            project: ScopeLimit {
                token_limit: 10_000_000,
                currency_limit_micros: None,
            },
            agent: None,
        },
        breaker: None,
        max_steps: 10,
        max_tokens_per_run: 1_000_000,
        timeout_seconds: 60,
    }
}

fn model_meta() -> awooop::model::proxy::CallMeta {
    awooop::model::proxy::CallMeta {
        run_id: None,
        agent: "bot".into(),
        trace: awooop::runtime::trace::TraceContext::generate(),
    }
}

fn model_request() -> awooop::model::wire::ChatRequest {
    awooop::model::wire::ChatRequest {
        system: None,
        messages: vec![awooop::model::wire::ChatMessage::User {
            content: "hi".into(),
        }],
        tools: vec![],
    }
}

/// The uid of a tenant's children is allocated once, never shared, and the same in every
/// process (it lives in `platform_tenant_uids`); the allocation is audited in platform scope.
#[tokio::test]
async fn tenant_uids_are_distinct_stable_and_audited() {
    let t = TestDb::new().await;
    let a = awooop::policy::PolicySource::from_db(t.db());
    let b = awooop::policy::PolicySource::from_db(t.db());
    let (alpha, beta) = (pid("alpha"), pid("beta"));
    let a1 = a.tenant_uid_offset(&alpha).await.unwrap();
    let b1 = a.tenant_uid_offset(&beta).await.unwrap();
    assert_ne!(a1, b1, "two tenants share a uid");
    // Another process (another source, empty cache) finds the same allocation.
    assert_eq!(b.tenant_uid_offset(&alpha).await.unwrap(), a1);
    assert_eq!(b.tenant_uid_offset(&beta).await.unwrap(), b1);
    let mut tx = t.owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'platform', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM platform_audit WHERE action = 'platform.tenant_uid.allocate'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    drop(tx);
    assert!(audited >= 2, "{audited}");
    // The runtime role cannot rewrite an allocation (INSERT and SELECT only).
    let mut tx = t.app.begin().await.unwrap();
    sqlx::query("SELECT set_config('awooop.scope', 'platform', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e =
        sqlx::query("UPDATE platform_tenant_uids SET project = 'gamma' WHERE project = 'alpha'")
            .execute(&mut *tx)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    drop(tx);
    t.cleanup().await;
}

/// `awooop serve` with only the runtime role's URL, as a file (what the chart gives the API
/// pods): it serves, and neither URL is in its environment.
#[tokio::test]
async fn serve_runs_on_the_runtime_url_alone_given_as_a_file() {
    let c = Cli::new().await;
    let port = free_port();
    let url_file = c.state.join("app-database-url");
    std::fs::write(&url_file, format!("{}\n", c.t.url)).unwrap();
    let admin_file = c.state.join("admin-token");
    std::fs::write(
        &admin_file,
        format!("adv-admin-token-{}", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    let key_file = c.state.join("gateway-key");
    std::fs::write(
        &key_file,
        format!("adv-gateway-key-{}", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env("AWOOOP_APP_DATABASE_URL_FILE", &url_file)
        .env("AWOOOP_ADMIN_TOKEN_FILE", &admin_file)
        .env("AWOOOP_GATEWAY_KEY_FILE", &key_file)
        .env("AWOOOP_STATE_DIR", &c.state)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        port,
        gateway_key: String::new(),
    };
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "awooop serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let environ = std::fs::read(format!("/proc/{}/environ", s.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(&c.t.url));
    // Both forms of one secret: refused at start, naming the variables.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:1"])
        .env("AWOOOP_APP_DATABASE_URL", &c.t.url)
        .env("AWOOOP_APP_DATABASE_URL_FILE", &url_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWOOOP_APP_DATABASE_URL_FILE"));
    drop(s);
    c.done().await;
}
