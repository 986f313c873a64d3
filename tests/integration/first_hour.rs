//! Issue 14's first hour, through the binary and the real server: `awooop apply` and
//! `awooop project onboard` (idempotent, resumable, what changed), `-o name`/`--quiet`, the run
//! commands and `audit tail`, the request log line, 404 for unknown paths, a taken port named,
//! worker log lines that name only their own run, and 503 for a dropped database connection.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::runtime::executor::{
    Executor, GuardedGateway, Journal, NoGateway, Outcome, RunContext, ScriptedExecutor,
};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};
use awooop::runtime::{CreateRun, RunService};
use awooop::tenancy;
use serde_json::{Value, json};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/onboard/acme")
}

/// The CLI against the test database, with a private state folder (keyring).
struct Cli {
    url: String,
    state: PathBuf,
}

impl Cli {
    fn new(t: &TestDb) -> Self {
        let state = std::env::temp_dir().join(format!("awooop-fh-{}", t.name));
        std::fs::create_dir_all(&state).unwrap();
        Self {
            url: t.url.clone(),
            state,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("AWOOOP_STATE_DIR", &self.state)
            .env_remove("REDIS_URL")
            .env_remove("AWOOOP_KEYRING")
            .env_remove("AWOOOP_LOG_FORMAT")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run and expect success; stdout as text.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "awooop {args:?} failed ({:?}): {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run and expect the JSON error with `code` (exit code 2).
    #[track_caller]
    fn fails(&self, args: &[&str], code: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "awooop {args:?}: {err}");
        let v: Value = serde_json::from_str(&err).unwrap_or_else(|_| panic!("not JSON: {err}"));
        assert_eq!(v["code"], code, "{err}");
        err
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Rows of a tenant table, counted in the project's scope.
async fn count(t: &TestDb, project: &str, sql: &'static str) -> i64 {
    let mut tx = scoped_tx(&t.app, project).await;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

#[tokio::test]
async fn onboard_creates_the_project_applies_six_contracts_and_is_idempotent_and_resumable() {
    let t = TestDb::new().await;
    let cli = Cli::new(&t);
    let dir = fixture();
    let dir = dir.to_str().unwrap();

    // Interrupted half-way: everything drafted and published, nothing approved.
    let out = cli.ok(&[
        "project",
        "onboard",
        "--from",
        dir,
        "--no-approve",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["project"], "acme");
    assert_eq!(v["created"], true);
    let actions: Vec<&str> = v["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["awaiting_approvals"; 6], "{out}");
    // The Project contract first: it sets the approval policy the others are approved under.
    assert_eq!(v["contracts"][0]["kind"], "project");
    assert_eq!(v["contracts"][0]["name"], "acme");
    assert_eq!(v["missing_kinds"], json!([]));
    assert_eq!(
        count(&t, "acme", "SELECT count(*) FROM active_revisions").await,
        0
    );

    // Resumed with the approvers: the same six revisions are activated, none is added.
    let out = cli.ok(&[
        "project",
        "onboard",
        "--from",
        dir,
        "--approve-as",
        "alice,bob",
    ]);
    assert!(out.contains("project acme: exists"), "{out}");
    assert_eq!(out.matches("activated again").count(), 6, "{out}");
    assert_eq!(
        count(&t, "acme", "SELECT count(*) FROM contract_revisions").await,
        6
    );
    assert_eq!(
        count(&t, "acme", "SELECT count(*) FROM active_revisions").await,
        6
    );
    assert_eq!(
        count(&t, "acme", "SELECT count(*) FROM contract_drafts").await,
        0
    );
    // The Project contract governs the project now (approval count from the file).
    let mut tx = scoped_tx(&t.app, "acme").await;
    let (name, required): (String, i32) =
        sqlx::query_as("SELECT display_name, required_approvals FROM projects")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((name.as_str(), required), ("Acme", 2));

    // Again: nothing changes, and it says so.
    let out = cli.ok(&["project", "onboard", "--from", dir, "-o", "name"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "project/acme");
    assert!(lines.contains(&"agent/echo@1"), "{out}");
    let out = cli.ok(&["project", "onboard", "--from", dir]);
    assert_eq!(out.matches(": unchanged").count(), 6, "{out}");
    assert_eq!(
        count(&t, "acme", "SELECT count(*) FROM contract_revisions").await,
        6
    );
    assert!(
        cli.ok(&["project", "onboard", "--from", dir, "--quiet"])
            .is_empty()
    );

    // A folder without its Project contract, and one naming another project, are refused
    // before anything is written.
    let other = cli.state.join("no-project");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(fixture().join("runtime.json"), other.join("runtime.json")).unwrap();
    cli.fails(
        &["project", "onboard", "--from", other.to_str().unwrap()],
        "E-APPLY-003",
    );
    cli.fails(
        &[
            "project",
            "onboard",
            "--from",
            dir,
            "--project",
            "someone-else",
        ],
        "E-APPLY-002",
    );
    t.cleanup().await;
}

#[tokio::test]
async fn apply_publishes_a_changed_body_once_and_reports_what_changed() {
    let t = TestDb::new().await;
    let cli = Cli::new(&t);
    cli.ok(&[
        "project",
        "onboard",
        "--from",
        fixture().to_str().unwrap(),
        "--approve-as",
        "alice,bob",
    ]);
    // A changed agent, applied with the local key and no --approve-as: local mode approves as
    // the approvers the active Project contract lists (two of alice, bob, carol).
    let file = cli.state.join("echo.json");
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("agent.echo.json"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<String>(),
    )
    .unwrap();
    body["display_name"] = json!("Echo 2");
    std::fs::write(
        &file,
        format!("# awooop: project=acme kind=agent name=echo\n{body}"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(
        cli.ok(&["apply", "-f", f, "-o", "name"]).trim(),
        "agent/echo@2"
    );
    let out = cli.ok(&["apply", "-f", f]);
    assert_eq!(out.trim(), "acme/agent/echo: unchanged (revision 2)");
    let yaml = cli.ok(&["apply", "-f", f, "-o", "yaml"]);
    assert!(yaml.contains("action: unchanged"), "{yaml}");
    let mut tx = scoped_tx(&t.app, "acme").await;
    let approvers: Vec<String> = sqlx::query_scalar(
        "SELECT approvers FROM activation_history WHERE kind = 'agent' AND revision = 2",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(approvers.len(), 2);
    assert!(
        approvers
            .iter()
            .all(|a| ["alice", "bob", "carol"].contains(&a.as_str()))
    );
    assert_eq!(
        count(
            &t,
            "acme",
            "SELECT count(*) FROM contract_revisions WHERE kind = 'agent'"
        )
        .await,
        2
    );
    // Applying the first body again re-activates revision 1: no third revision.
    let out = cli.ok(&[
        "apply",
        "-f",
        fixture().join("agent.echo.json").to_str().unwrap(),
        "--project",
        "acme",
    ]);
    assert!(out.contains("revision 1 activated again"), "{out}");
    assert_eq!(
        count(
            &t,
            "acme",
            "SELECT count(*) FROM contract_revisions WHERE kind = 'agent'"
        )
        .await,
        2
    );
    // The header and the flags must agree; a Project contract carries its project's name.
    cli.fails(&["apply", "-f", f, "--project", "other"], "E-APPLY-002");
    let bad = cli.state.join("bad-project.json");
    std::fs::write(&bad, "# awooop: project=acme kind=project name=default\n{}").unwrap();
    cli.fails(&["apply", "-f", bad.to_str().unwrap()], "E-APPLY-002");
    std::fs::write(
        &bad,
        "# awooop: project=acme kind=agent name=x colour=red\n{}",
    )
    .unwrap();
    cli.fails(&["apply", "-f", bad.to_str().unwrap()], "E-APPLY-001");
    // An approver outside the ACL is refused and nothing is activated.
    body["display_name"] = json!("Echo 3");
    std::fs::write(
        &file,
        format!("# awooop: project=acme kind=agent name=echo\n{body}"),
    )
    .unwrap();
    cli.fails(
        &["apply", "-f", f, "--approve-as", "mallory,eve"],
        "E-CONTRACT-014",
    );
    let mut tx = scoped_tx(&t.app, "acme").await;
    let active: i32 = sqlx::query_scalar(
        "SELECT revision FROM active_revisions WHERE kind = 'agent' AND name = 'echo'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(active, 1);
    // Other creating commands share the output flags: `-o name` is the value a script needs.
    let token = cli.ok(&[
        "apikey",
        "create",
        "--project",
        "acme",
        "--principal",
        "me",
        "--agents",
        "echo",
        "--envs",
        "dev",
        "-o",
        "name",
    ]);
    assert!(token.trim().starts_with("awk.acme."), "{token}");
    assert_eq!(token.lines().count(), 1);
    t.cleanup().await;
}

/// Poll until the child's stderr so far contains `needle` (the log is read by a thread).
async fn wait_for_log(log: &Arc<Mutex<String>>, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = log.lock().unwrap().clone();
        if s.contains(needle) {
            return s;
        }
        assert!(Instant::now() < deadline, "no `{needle}` in the log:\n{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `awooop up` on a free port with its stderr collected.
struct Up {
    child: std::process::Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Up {
    async fn start(cli: &Cli) -> Self {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            // `up` onboards folders at start with the same path as `project onboard`.
            .args(["--onboard", fixture().to_str().unwrap()])
            .env("DATABASE_URL", &cli.url)
            .env("AWOOOP_STATE_DIR", &cli.state)
            .env("HOME", &cli.state)
            .env_remove("REDIS_URL")
            .env_remove("KUBECONFIG")
            .env_remove("AWOOOP_LOG_FORMAT")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "awooop up did not listen: {}",
                log.lock().unwrap()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "awooop up exited: {}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, port, log }
    }

    async fn get(&self, path: &str, token: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        (status, text)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn runs_are_created_followed_listed_and_cancelled_from_the_cli_and_logged() {
    let t = TestDb::new().await;
    let cli = Cli::new(&t);
    cli.ok(&[
        "project",
        "onboard",
        "--from",
        fixture().to_str().unwrap(),
        "--approve-as",
        "alice,bob",
    ]);
    // No worker yet: a queued run can be cancelled.
    let id = cli.ok(&[
        "run",
        "create",
        "--project",
        "acme",
        "--agent",
        "echo",
        "--input",
        r#"{"text":"hi"}"#,
        "-o",
        "name",
    ]);
    let id = id.trim();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let v: Value =
        serde_json::from_str(&cli.ok(&["run", "cancel", "--project", "acme", id])).unwrap();
    assert_eq!(v["state"], "cancelled");
    cli.fails(&["run", "cancel", "--project", "acme", id], "E-RUN-002");
    // `run wait` on a finished run that did not succeed ends with exit code 3.
    let o = cli.run(&["run", "wait", "--project", "acme", id]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cancelled"));
    // Another tenant's run is not found from this project.
    cli.ok(&["project", "create", "other", "-q"]);
    cli.fails(&["run", "get", "--project", "other", id], "E-RUN-001");

    // With `awooop up` running (its worker), `run create --wait` follows the run to its end.
    let up = Up::start(&cli).await;
    let out = cli.ok(&[
        "run",
        "create",
        "--project",
        "acme",
        "--agent",
        "echo",
        "--input",
        r#"{"text":"hello there"}"#,
        "--wait",
    ]);
    assert!(out.contains("step 0 output echo: succeeded"), "{out}");
    assert!(out.contains("succeeded after"), "{out}");
    assert!(out.contains("hello there"), "{out}");
    let list: Value = serde_json::from_str(&cli.ok(&[
        "run",
        "list",
        "--project",
        "acme",
        "--state",
        "succeeded",
    ]))
    .unwrap();
    let done = &list["runs"][0];
    let run_id = done["run_id"].as_str().unwrap().to_string();
    let got: Value =
        serde_json::from_str(&cli.ok(&["run", "get", "--project", "acme", &run_id])).unwrap();
    assert_eq!(got["steps"][0]["step_key"], "echo");
    assert_eq!(got["output"]["result"], "hello there");

    // The server log names the run's start and end under that run only.
    let log = wait_for_log(&up.log, &format!("run_id={run_id}"), 10).await;
    let finished: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("run finished") && l.contains(&run_id))
        .collect();
    assert_eq!(finished.len(), 1, "{log}");
    assert_eq!(finished[0].matches("run_id=").count(), 1, "{}", finished[0]);

    // One request line per API request: method, route, status, latency, project, trace id;
    // never the credential.
    let admin = std::fs::read_to_string(cli.state.join("admin-token")).unwrap();
    let admin = admin.trim();
    // The folder was onboarded already: `up`'s onboarding changed nothing.
    let log = up.log.lock().unwrap().clone();
    assert_eq!(log.matches(": unchanged (revision 1)").count(), 6, "{log}");
    let (status, _) = up.get("/v1/control/projects", admin).await;
    assert_eq!(status, 200);
    let log = wait_for_log(&up.log, "route=/v1/control/projects", 10).await;
    let line = log
        .lines()
        .find(|l| l.contains("route=/v1/control/projects"))
        .unwrap();
    for field in [
        "method=GET",
        "status=200",
        "latency_ms=",
        "project=",
        "trace_id=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(!log.contains(admin), "the admin token reached the log");
    // Unknown paths: 404 with a code (was 422), logged too.
    let (status, body) = up.get("/v1/nothing/here", admin).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("E-REQ-006"), "{body}");
    wait_for_log(&up.log, "status=404", 10).await;

    // `audit tail` shows what happened, oldest first.
    let tail = cli.ok(&["audit", "tail", "--project", "acme", "-n", "50"]);
    assert!(tail.contains("revision.activate agent/echo@1 ok"), "{tail}");
    assert!(
        tail.contains("run.cancel") || tail.contains("cancel"),
        "{tail}"
    );
    let json_line = cli.ok(&["audit", "tail", "--project", "acme", "-n", "1", "--json"]);
    let row: Value = serde_json::from_str(json_line.trim()).unwrap();
    assert!(row["action"].is_string());

    // A second `up` (and a `serve`) on the same port names the address and what to do.
    for cmd in [vec!["up"], vec!["serve"]] {
        let o = Command::new(BIN)
            .args(&cmd)
            .args(["--listen", &format!("127.0.0.1:{}", up.port)])
            .env("DATABASE_URL", &cli.url)
            .env("AWOOOP_STATE_DIR", &cli.state)
            .env("AWOOOP_ADMIN_TOKEN", "x".repeat(40))
            .env("AWOOOP_GATEWAY_KEY", "y".repeat(40))
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{}", up.port)) && err.contains("already in use"),
            "{cmd:?}: {err}"
        );
    }
    drop(up);
    t.cleanup().await;
}

/// A `tracing` writer into memory (the test's own subscriber, on the test's thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// An executor that awaits inside the run, as model and tool calls do, and logs around it.
struct Awaiting(ScriptedExecutor);

#[async_trait::async_trait]
impl Executor for Awaiting {
    async fn execute(
        &self,
        ctx: &RunContext,
        journal: &mut Journal,
    ) -> awooop::error::Result<Outcome> {
        tracing::info!("calling out");
        tokio::time::sleep(Duration::from_millis(15)).await;
        tracing::info!("called out");
        self.0.execute(ctx, journal).await
    }
}

/// Issue 14: the worker held `span.enter()` across `.await`, so lines of other tasks polled
/// on the same thread (other runs, the reaper, the completion writer) carried chains of
/// unrelated `run{run_id=…}` spans. Every line written while many runs execute at once must
/// name at most one run, and a run's lines name that run.
#[tokio::test]
async fn worker_log_lines_name_only_their_own_run() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "logs", 1).await;
    let echo = json!({
        "display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 4, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "{{input.n}}"}]}
    });
    tenancy::scope(p.clone(), async {
        let r = publish(&cp, ContractKind::Agent, "echo", echo).await;
        approve_and_activate(&cp, r, 1).await;
    })
    .await;
    let runs = RunService::new(cp.clone());
    let mut ids = Vec::new();
    for n in 0..24 {
        let req = CreateRun {
            agent: "echo".into(),
            input: json!({"n": n}),
            mode: None,
            reply_to: None,
        };
        let a = tenancy::scope(p.clone(), runs.create(&admin(), req, None, None))
            .await
            .unwrap();
        ids.push(a.run_id.to_string());
    }
    // Everything the worker and the database driver log (sqlx statements at TRACE are
    // written inside whatever span is current), captured on this (current-thread) runtime.
    let buf = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let exec = Arc::new(Awaiting(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    ))));
    let mut cfg = WorkerConfig::new("logs");
    cfg.slots = 8;
    cfg.poll = Duration::from_millis(20);
    cfg.reap_every = Duration::from_millis(50);
    let worker = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let handle = tokio::spawn(worker.run(rx));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = count(
            &t,
            "logs",
            "SELECT count(*) FROM runs WHERE state = 'succeeded'",
        )
        .await;
        if done == 24 {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 24 runs finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
    drop(_guard);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let in_runs: Vec<&str> = text.lines().filter(|l| l.contains("run_id=")).collect();
    assert!(
        in_runs.len() >= 24,
        "too few lines inside runs ({}); the capture is not working:\n{text}",
        in_runs.len()
    );
    for l in &in_runs {
        assert_eq!(
            l.matches("run_id=").count(),
            1,
            "a line names more than one run ({} bytes): {}",
            l.len(),
            &l[..l.len().min(600)]
        );
    }
    // Each run's own lines exist and name it alone, around the awaits of its executor too.
    for id in &ids {
        let own = format!("run_id={id}");
        for what in ["calling out", "called out"] {
            assert_eq!(
                in_runs
                    .iter()
                    .filter(|l| l.contains(&own) && l.contains(what))
                    .count(),
                1,
                "run {id}: `{what}`"
            );
        }
    }
    t.cleanup().await;
}

/// A connection the server terminates (SQLSTATE 57P01, as `pg_terminate_backend`, a failover
/// or a fast shutdown do) is "retry later", not an internal error: E-UNAVAILABLE-001, 503.
#[tokio::test]
async fn a_terminated_database_connection_is_503_unavailable() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    project(&cp, "drop", 1).await;
    let db = t.db();
    let err = tenancy::scope(pid("drop"), async {
        let mut tx = db.tenant().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        t.terminate_backend(pid).await;
        let e = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
        awooop::error::Error::from(e)
    })
    .await;
    assert_eq!(err.code.as_str(), "E-UNAVAILABLE-001", "{err:?}");
    assert_eq!(err.code.http_status(), 503);
    // Through the API's one error mapping.
    let resp = axum::response::IntoResponse::into_response(err);
    assert_eq!(resp.status().as_u16(), 503);
    t.cleanup().await;
}

/// `awooop up` onboards the EwoooC example through the same path as `awooop project onboard
/// --from DIR` (the folder it ships, written to the state folder): the prompt artifact from
/// the folder, the six contracts in an order that makes each activation valid. A second start
/// changes nothing and says so.
#[tokio::test]
async fn up_onboards_ewoooc_through_project_onboard_and_a_second_start_changes_nothing() {
    let t = TestDb::new().await;
    let cli = Cli::new(&t);
    let dir = cli.state.join("examples/ewoooc");
    let prefix = format!("  onboard {}: ", dir.display());
    let up = Up::start(&cli).await;
    let log = wait_for_log(
        &up.log,
        &format!("{prefix}ewoooc/channel/default: revision 1 published and activated"),
        60,
    )
    .await;
    drop(up);
    let ours: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(ours[0], "project ewoooc: created", "{log}");
    assert!(
        ours[1].starts_with("ewoooc/artifact/prompts/openclaw-biz: registered from"),
        "{log}"
    );
    let kinds: Vec<&str> = ours[2..]
        .iter()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ewoooc/project/ewoooc",
            "ewoooc/runtime/default",
            "ewoooc/policy/default",
            "ewoooc/agent/openclaw-biz",
            "ewoooc/mcp_gateway/default",
            "ewoooc/channel/default"
        ],
        "{log}"
    );
    assert!(
        ours[2..]
            .iter()
            .all(|l| l.ends_with("revision 1 published and activated")),
        "{log}"
    );
    assert!(
        log.contains("onboard ewoooc: stdio catalog entry market-mcp registered"),
        "{log}"
    );
    // The folder onboarded is the example as shipped, on disk for the user to read.
    let shipped = std::fs::read_to_string(dir.join("agent-openclaw-biz.json")).unwrap();
    assert_eq!(
        shipped,
        std::fs::read_to_string(repo().join("docs/examples/ewoooc/agent-openclaw-biz.json"))
            .unwrap()
    );
    assert_eq!(
        count(&t, "ewoooc", "SELECT count(*) FROM active_revisions").await,
        6
    );

    let up = Up::start(&cli).await;
    let log = wait_for_log(
        &up.log,
        &format!("{prefix}ewoooc/channel/default: unchanged (revision 1)"),
        60,
    )
    .await;
    drop(up);
    let ours: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(ours[0], "project ewoooc: exists", "{log}");
    assert!(
        ours[1].starts_with("ewoooc/artifact/prompts/openclaw-biz: unchanged"),
        "{log}"
    );
    assert_eq!(
        ours.iter()
            .filter(|l| l.contains(": unchanged (revision 1)"))
            .count(),
        6,
        "{log}"
    );
    assert!(
        !log.contains("catalog entry market-mcp registered"),
        "{log}"
    );
    assert_eq!(
        count(&t, "ewoooc", "SELECT count(*) FROM contract_revisions").await,
        6
    );
    assert_eq!(
        count(&t, "ewoooc", "SELECT count(*) FROM artifact_refs").await,
        1
    );
    t.cleanup().await;
}
