//! Whole-system tests through the binary's real interfaces: `awooop up` as a process serving
//! HTTP on a free port, stopped with SIGTERM; CLI commands with their exit codes and JSON.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_awooop");

/// Minimal HTTP/1.1 client (Connection: close), enough for JSON endpoints.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, payload) = text.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn up_serves_the_api_and_stops_gracefully_on_sigterm() {
    let t = TestDb::new().await;
    let state = std::env::temp_dir().join(format!("awooop-e2e-{}", t.name));
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &t.url)
        .env("AWOOOP_STATE_DIR", &state)
        .env_remove("REDIS_URL")
        .env_remove("KUBECONFIG")
        .env("HOME", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "awooop up did not start listening"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "awooop up exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, ready) = http(port, "GET", "/readyz", None, None).await;
    assert_eq!((s, ready["postgres"].as_str()), (200, Some("ok")));
    assert_eq!(ready["redis"], "not_configured");
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    let (s, projects) = http(
        port,
        "GET",
        "/v1/control/projects",
        Some(token.trim()),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(projects[0]["project_id"], "awoooi");
    assert_eq!(projects[0]["mode"], "shadow");
    let (s, err) = http(port, "GET", "/v1/control/projects", Some("wrong"), None).await;
    assert_eq!((s, err["code"].as_str()), (401, Some("E-AUTH-002")));
    // The seeded project got a local signing key so the lifecycle works out of the box.
    let keyring = std::fs::read_to_string(state.join("keyring")).unwrap();
    assert!(keyring.contains("local:"));

    // No kubeconfig: activations are projected into manifest files, on NOTIFY (the periodic
    // resync is a minute away, so a file within seconds shows the notification drove it).
    let cp = t.control(awooop::coord::Coord::none());
    let awoooi = pid("awoooi");
    awooop::tenancy::scope(awoooi.clone(), cp.register_signing_key(&admin(), KEY_ID))
        .await
        .unwrap();
    let project_body = serde_json::json!({
        "display_name": "AWOOOI",
        "data_boundary": {"default_class": "internal", "allowed_classes": ["internal"]},
        "budget": {"period": "day", "token_limit": 1000}, "acl": {},
        "approval": {"required_approvals": 2, "ttl_seconds": 3600}, "environments": ["prod"],
        "workers": {"min_replicas": 1, "max_replicas": 2, "runs_per_replica": 10}
    });
    awooop::tenancy::scope(awoooi, async {
        let r = publish(
            &cp,
            awooop::contracts::ContractKind::Project,
            "awoooi",
            project_body,
        )
        .await;
        approve_and_activate(&cp, r, 2).await;
    })
    .await;
    let manifest = state.join("manifests/awoooi/agentproject.yaml");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !manifest.exists() {
        assert!(
            Instant::now() < deadline,
            "activation was not projected to {}",
            manifest.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        std::fs::read_to_string(&manifest)
            .unwrap()
            .contains("kind: AgentProject")
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "awooop up did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // Neither the admin token nor the keyring material appeared in the logs.
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("AwoooP is up"));
    assert!(!logs.contains(token.trim()));
    let material = keyring
        .lines()
        .find(|l| l.starts_with("local:"))
        .unwrap()
        .trim_start_matches("local:");
    assert!(!logs.contains(material));
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}

#[tokio::test]
async fn cli_lifecycle_with_exit_codes_and_json_errors() {
    let t = TestDb::new().await;
    let state = std::env::temp_dir().join(format!("awooop-cli-{}", t.name));
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &t.url)
            .env("AWOOOP_STATE_DIR", &state)
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let json =
        |s: &str| -> Value { serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}")) };
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/contracts/runtime/valid/awoooi_default.json"
    );
    let invalid = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/contracts/runtime/invalid/heartbeat_not_shorter_than_lease.json"
    );

    let (code, out, _) = run(&["contract", "validate", "--kind", "runtime", fixture]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["valid"], true);
    // The invalid fixture wraps its body with the expected verdict: validate the body itself,
    // which breaks exactly one rule (heartbeat not shorter than the lease).
    let doc = json(&std::fs::read_to_string(invalid).unwrap());
    let body_file = std::env::temp_dir().join(format!("awooop-cli-body-{}.json", t.name));
    std::fs::write(&body_file, doc["body"].to_string()).unwrap();
    let (code, _, err) = run(&[
        "contract",
        "validate",
        "--kind",
        "runtime",
        body_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    let err = json(&err);
    assert_eq!(doc["expect"][0]["code"], "E-CONTRACT-003");
    assert_eq!(err["code"], doc["expect"][0]["code"], "{err}");
    assert_eq!(
        err["details"]["violations"][0]["path"], doc["expect"][0]["path"],
        "{err}"
    );
    assert_eq!(
        err["details"]["violations"].as_array().unwrap().len(),
        1,
        "{err}"
    );
    let _ = std::fs::remove_file(&body_file);

    let (code, out, err) = run(&["project", "create", "cli-demo", "--required-approvals", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["mode"], "shadow");
    let (code, _, err) = run(&["project", "create", "cli-demo"]);
    assert_eq!(
        (code, json(&err)["code"].as_str()),
        (2, Some("E-PROJECT-002"))
    );
    let (code, _, err) = run(&[
        "signing-key",
        "create",
        "--project",
        "cli-demo",
        "--key-id",
        "k1",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&[
        "contract",
        "draft",
        "--project",
        "cli-demo",
        "--kind",
        "runtime",
        "--name",
        "default",
        fixture,
    ]);
    assert_eq!(code, 0, "{err}");
    let draft = json(&out)["draft_id"].as_str().unwrap().to_string();
    let (code, out, err) = run(&[
        "contract",
        "publish",
        "--project",
        "cli-demo",
        "--draft",
        &draft,
        "--key-id",
        "k1",
    ]);
    assert_eq!(code, 0, "{err}");
    let rev = json(&out)["revision_id"].as_str().unwrap().to_string();
    assert_eq!(
        run(&[
            "contract",
            "approve",
            "--project",
            "cli-demo",
            "--revision",
            &rev,
            "--as",
            "alice"
        ])
        .0,
        0
    );
    let (code, _, err) = run(&[
        "contract",
        "approve",
        "--project",
        "cli-demo",
        "--revision",
        &rev,
        "--as",
        "alice",
    ]);
    assert_eq!(
        (code, json(&err)["code"].as_str()),
        (2, Some("E-CONTRACT-011"))
    );
    let (code, _, err) = run(&[
        "contract",
        "activate",
        "--project",
        "cli-demo",
        "--revision",
        &rev,
    ]);
    assert_eq!(
        (code, json(&err)["code"].as_str()),
        (2, Some("E-CONTRACT-012"))
    );
    assert_eq!(
        run(&[
            "contract",
            "approve",
            "--project",
            "cli-demo",
            "--revision",
            &rev,
            "--as",
            "bob"
        ])
        .0,
        0
    );
    let (code, _, err) = run(&[
        "contract",
        "activate",
        "--project",
        "cli-demo",
        "--revision",
        &rev,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&[
        "contract",
        "show",
        "--project",
        "cli-demo",
        "--kind",
        "runtime",
        "--name",
        "default",
    ]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["revision_id"], rev.as_str());
    let (code, out, _) = run(&[
        "contract",
        "history",
        "--project",
        "cli-demo",
        "--kind",
        "runtime",
        "--name",
        "default",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["activations"][0]["approvers"],
        serde_json::json!(["alice", "bob"])
    );
    let (code, out, _) = run(&["mode", "set", "--project", "cli-demo", "canary"]);
    assert_eq!((code, json(&out)["mode"].as_str()), (0, Some("canary")));
    let (code, _, err) = run(&["mode", "set", "--project", "cli-demo", "auto_remediate"]);
    assert_eq!(
        (code, json(&err)["code"].as_str()),
        (2, Some("E-MIGRATION-001"))
    );
    // Break-glass approval tokens bypass M-of-N, so they leave an audit row of their own
    // (committed before the token is printed) naming who, which tool, which arguments.
    let gw_key = "k".repeat(64);
    let (code, out, err) = run(&[
        "token",
        "approve",
        "--project",
        "cli-demo",
        "--agent",
        "remediator",
        "--env",
        "prod",
        "--tool",
        "k8s__restart",
        "--arguments",
        r#"{"deployment":"web"}"#,
        "--approver",
        "carol",
        "--gateway-key",
        &gw_key,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().split('.').count(), 3, "a JWT: {out}");
    let mut su = t.superuser().await;
    let row: (String, String, Value) = sqlx::query_as(
        "SELECT actor, target, details FROM audit_log \
         WHERE project_id = 'cli-demo' AND action = 'approval.break_glass'",
    )
    .fetch_one(&mut su)
    .await
    .expect("one break-glass audit row");
    assert_eq!(
        (row.0.as_str(), row.1.as_str()),
        ("cli:carol", "k8s__restart")
    );
    assert_eq!(row.2["agent"], "remediator");
    assert_eq!(
        row.2["args_sha256"].as_str(),
        Some(
            awooop::gateway::approval::arguments_hash(&serde_json::json!({"deployment": "web"}))
                .as_str()
        )
    );
    assert!(row.2["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(
        !row.2.to_string().contains(&gw_key),
        "no key material in audit"
    );
    // Configuration is validated with a message naming the flag.
    let (code, _, err) = run(&["project", "list", "--db-max-connections", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--db-max-connections"), "{err}");
    let _ = std::fs::remove_dir_all(&state);
    t.cleanup().await;
}
