//! The upstream MCP client (`awooop::gateway::upstream`) against real MCP servers: the Rust
//! fixture over Streamable HTTP (JSON and SSE) and stdio, and the official Python SDK's server
//! over both transports; plus the official Python client against the Rust fixture.

use std::time::Duration;

use awooop::contracts::McpProvider;
use awooop::gateway::upstream::{CallRequest, Injected, UpstreamConfig, UpstreamError, Upstreams};
use awooop::tenancy::ProjectId;
use awooop_testkit::fixture::{FixtureOptions, FixtureServer};
use serde_json::{Map, Value, json};

use crate::mcp_support::*;

fn project(s: &str) -> ProjectId {
    ProjectId::parse(s).expect("project id")
}

async fn call(
    up: &Upstreams,
    project: &ProjectId,
    provider: &McpProvider,
    tool: &str,
    args: Value,
    creds: &[Injected],
) -> Result<Value, UpstreamError> {
    call_with(
        up,
        project,
        provider,
        tool,
        args,
        creds,
        None,
        Duration::from_secs(20),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn call_with(
    up: &Upstreams,
    project: &ProjectId,
    provider: &McpProvider,
    tool: &str,
    args: Value,
    creds: &[Injected],
    traceparent: Option<&str>,
    timeout: Duration,
) -> Result<Value, UpstreamError> {
    let Value::Object(arguments) = args else {
        panic!("arguments must be an object")
    };
    up.call_tool(CallRequest {
        project,
        provider,
        tool,
        arguments: &arguments,
        credentials: creds,
        traceparent,
        idempotency_key: None,
        timeout,
    })
    .await
}

#[track_caller]
fn text(r: &Value) -> &str {
    r["content"][0]["text"].as_str().expect("text content")
}

/// Wait (bounded) until `cond` holds; for effects that happen in background tasks.
async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(5), cond).await
}

async fn eventually_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn process_gone(pid: u64) -> bool {
    // Gone, or a zombie (killed, not yet reaped) in every thread: a multi-threaded process
    // shows its leader as a zombie while other threads are still exiting and holding its
    // pipes open, and it cannot be waited for until they are done.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
            s.rsplit_once(')').is_some_and(|(_, rest)| {
                matches!(rest.trim_start().as_bytes().first(), Some(b'Z' | b'X'))
            })
        })
    })
}

fn pid_of(r: &Value) -> u64 {
    r["structuredContent"]["pid"].as_u64().expect("pid")
}

#[tokio::test]
async fn http_session_and_connection_are_reused_across_calls() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    for i in 0..10 {
        let r = call(&up, &p, &prov, "echo", json!({"i": i, "s": "é\n\"x"}), &[])
            .await
            .unwrap();
        assert_eq!(r["structuredContent"], json!({"i": i, "s": "é\n\"x"}));
        assert_eq!(r["isError"], false);
    }
    // Concurrent calls share the session (initialization happens once).
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (up, p, prov) = (up.clone(), p.clone(), prov.clone());
        tasks.push(tokio::spawn(async move {
            call(&up, &p, &prov, "echo", json!({"n": i}), &[]).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap()["structuredContent"]["n"], i);
    }
    assert_eq!(fx.initializes(), 1, "one MCP session for all calls");
    assert_eq!(fx.calls(), 26);
    assert!(
        fx.connections() <= 17,
        "keep-alive: at most one connection per concurrent call, got {}",
        fx.connections()
    );
    assert_eq!(up.open_connections(), 1);
    up.shutdown().await;
    assert_eq!(
        fx.deleted_sessions(),
        1,
        "shutdown ends the session with DELETE"
    );
    assert_eq!(up.open_connections(), 0);
}

#[tokio::test]
async fn http_sse_responses_are_parsed_and_server_pings_answered() {
    let fx = FixtureServer::start(FixtureOptions {
        sse: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    let r = call(&up, &p, &prov, "blob", json!({"size": 20000}), &[])
        .await
        .unwrap();
    assert_eq!(text(&r).len(), 20000);
    let err = call(&up, &p, &prov, "fail", json!({"mode": "rpc"}), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        UpstreamError::Rpc {
            code: -32001,
            message: "fixture failure".into()
        }
    );
    eventually("both server pings answered", || fx.client_answers() >= 2).await;
}

#[tokio::test]
async fn http_falls_back_to_2025_06_18_when_the_server_negotiates_it() {
    use awooop::gateway::upstream::http::HttpSession;
    let fx = FixtureServer::start(FixtureOptions {
        protocol: Some("2025-06-18".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = HttpSession::new(&fx.url(), &[], &test_config(), "acme", loopback_egress()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let r = s
        .call(
            "echo",
            &Map::from_iter([("a".into(), json!(1))]),
            None,
            None,
            deadline,
        )
        .await
        .unwrap();
    assert_eq!(r["structuredContent"]["a"], 1);
    assert_eq!(s.protocol_version(), Some("2025-06-18"));

    // A server that insists on a revision we do not speak is refused clearly.
    let old = FixtureServer::start(FixtureOptions {
        protocol: Some("2024-11-05".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = HttpSession::new(&old.url(), &[], &test_config(), "acme", loopback_egress()).unwrap();
    let err = s
        .call("echo", &Map::new(), None, None, deadline)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Protocol(m) if m.contains("unsupported protocol version")),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_reinitializes_once_when_the_session_expired() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    call(&up, &p, &prov, "echo", json!({}), &[]).await.unwrap();
    fx.expire_sessions();
    let r = call(&up, &p, &prov, "echo", json!({"after": "expiry"}), &[])
        .await
        .unwrap();
    assert_eq!(r["structuredContent"]["after"], "expiry");
    assert_eq!(fx.initializes(), 2);
    assert_eq!(
        fx.calls(),
        2,
        "the expired call reached no tool; the retry did"
    );
}

#[tokio::test]
async fn http_credentials_and_traceparent_are_sent_as_headers() {
    let secret = "tok-5f0c1e9a";
    let fx = FixtureServer::start(FixtureOptions {
        require_header: Some(("authorization".into(), format!("Bearer {secret}"))),
        ..Default::default()
    })
    .await
    .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    let creds = [
        header("Authorization", "Bearer ", secret),
        header("X-Api-Key", "", "k-2"),
    ];
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = call_with(
        &up,
        &p,
        &prov,
        "headers",
        json!({}),
        &creds,
        Some(tp),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let h = &r["structuredContent"];
    assert_eq!(h["traceparent"], tp);
    assert_eq!(h["x-api-key"], "k-2");
    assert_eq!(h["authorization"], format!("Bearer {secret}"));
    assert!(h["mcp-session-id"].is_string());
    assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    let r = call(
        &up,
        &p,
        &prov,
        "secret",
        json!({"name": "x-api-key"}),
        &creds,
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "k-2");

    // A wrong credential: a clear error that does not carry the value.
    let err = call(
        &up,
        &project("other"),
        &prov,
        "echo",
        json!({}),
        &[header("Authorization", "Bearer ", "wrong-value-77")],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Unavailable(m) if m.contains("401")),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("wrong-value-77"));
}

/// A redirect is an answer, never followed: following it would carry the credential headers
/// to wherever the upstream points (the upstream HTTP client follows none, by construction).
#[tokio::test]
async fn http_redirects_are_not_followed_and_credentials_stay_put() {
    let secret = "tok-7d2e91b4";
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    // `307` to the fixture's own endpoint: followed, the call would succeed there.
    let fx_base = fx.url().trim_end_matches("/mcp").to_string();
    let redirector = crate::support::Redirector::start(&fx_base).await;
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("redir", &format!("{}/mcp", redirector.base_url));
    let err = call(
        &up,
        &p,
        &prov,
        "echo",
        json!({}),
        &[header("Authorization", "Bearer ", secret)],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Protocol(m) if m.contains("307")),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
    assert!(redirector.hits() >= 1, "the redirector was never asked");
    assert_eq!(fx.initializes(), 0, "the redirect was followed");
    assert_eq!(fx.calls(), 0, "the redirect was followed");
}

/// An `https` upstream is spoken to over TLS or not at all: a server that does not complete
/// a TLS handshake (here the plain-HTTP fixture) gets no request in clear text, and the call
/// fails as unavailable.
#[tokio::test]
async fn https_upstreams_never_fall_back_to_clear_text() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let url = fx.url().replacen("http://", "https://", 1);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let err = call(&up, &p, &http_provider("tls", &url), "echo", json!({}), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");
    assert_eq!(fx.initializes(), 0, "a request went out in clear text");
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn rotated_credentials_open_a_new_session_and_close_the_old() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    let r = call(
        &up,
        &p,
        &prov,
        "secret",
        json!({"name": "x-key"}),
        &[header("X-Key", "", "v1")],
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "v1");
    let r = call(
        &up,
        &p,
        &prov,
        "secret",
        json!({"name": "x-key"}),
        &[header("X-Key", "", "v2")],
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "v2");
    assert_eq!(fx.initializes(), 2);
    assert_eq!(up.open_connections(), 1);
    eventually("the old session is ended", || fx.deleted_sessions() == 1).await;
    assert_eq!(fx.open_sessions(), 1);
}

#[tokio::test]
async fn projects_never_share_a_session() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let prov = http_provider("fx", &fx.url());
    for p in ["acme", "globex", "acme", "globex"] {
        call(&up, &project(p), &prov, "echo", json!({}), &[])
            .await
            .unwrap();
    }
    assert_eq!(fx.initializes(), 2);
    assert_eq!(up.open_connections(), 2);
}

#[tokio::test]
async fn errors_timeouts_and_unreachable_upstreams_are_typed() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("fx", &fx.url());
    let r = call(&up, &p, &prov, "fail", json!({"mode": "tool"}), &[])
        .await
        .unwrap();
    assert_eq!(
        r["isError"], true,
        "an isError result is a result, not an error"
    );
    let err = call(&up, &p, &prov, "nope", json!({}), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::Rpc { code: -32602, .. }),
        "{err:?}"
    );
    let err = call_with(
        &up,
        &p,
        &prov,
        "sleep",
        json!({"ms": 5000}),
        &[],
        None,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err, UpstreamError::Timeout);
    // The session survives a timed-out call.
    call(&up, &p, &prov, "echo", json!({}), &[]).await.unwrap();

    // Nothing listens on a port we just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = http_provider("dead", &format!("http://127.0.0.1:{port}/mcp"));
    let err = call(&up, &p, &dead, "echo", json!({}), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");

    // Responses beyond the size limit are refused, over HTTP and over stdio.
    let small = test_upstreams(UpstreamConfig {
        max_response_bytes: 4096,
        ..test_config()
    });
    call(&small, &p, &prov, "blob", json!({"size": 1000}), &[])
        .await
        .unwrap();
    for provider in [&prov, &rust_stdio_provider("local")] {
        let err = call(&small, &p, provider, "blob", json!({"size": 10000}), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Protocol(m) if m.contains("4096")),
            "{err:?}"
        );
    }
    small.shutdown().await;

    // A stdio command that does not exist.
    let missing = stdio_provider("missing", "missing");
    let err = call(&up, &p, &missing, "echo", json!({}), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn idle_connections_are_evicted_and_least_recently_used_beyond_the_cap() {
    let fx = FixtureServer::start(FixtureOptions::default())
        .await
        .unwrap();
    let up = test_upstreams(UpstreamConfig {
        idle_timeout: Duration::from_secs(1),
        max_sessions: 2,
        ..test_config()
    });
    let prov = http_provider("fx", &fx.url());
    for p in ["p-one", "p-two", "p-three"] {
        call(&up, &project(p), &prov, "echo", json!({}), &[])
            .await
            .unwrap();
    }
    assert_eq!(
        up.open_connections(),
        2,
        "the cap closes the least recently used"
    );
    eventually("the evicted session is ended", || {
        fx.deleted_sessions() >= 1
    })
    .await;
    // The background sweeper closes the idle ones by itself (waited for, with a deadline far
    // beyond the 1 s idle timeout, not slept for).
    eventually_within(
        "the sweeper closes the idle sessions and ends them",
        Duration::from_secs(30),
        || up.open_connections() == 0 && fx.deleted_sessions() == 3,
    )
    .await;
}

#[tokio::test]
async fn stdio_child_gets_only_a_minimal_environment_and_its_credentials() {
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = rust_stdio_provider("local");
    let creds = [env_var("FIXTURE_TOKEN", "stdio-secret-31")];
    let r = call(&up, &p, &prov, "env", json!({}), &creds)
        .await
        .unwrap();
    let names: Vec<&str> = r["structuredContent"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "FIXTURE_TOKEN",
    ];
    for n in &names {
        assert!(
            allowed.contains(n),
            "unexpected variable {n} in the child: {names:?}"
        );
    }
    assert!(names.contains(&"FIXTURE_TOKEN"));
    let r = call(
        &up,
        &p,
        &prov,
        "secret",
        json!({"name": "FIXTURE_TOKEN"}),
        &creds,
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "stdio-secret-31");
    up.shutdown().await;
}

#[tokio::test]
async fn stdio_requests_are_multiplexed_and_traceparent_rides_in_meta() {
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = rust_stdio_provider("local");
    // Eight calls that the child answers only once all eight are in flight together (a child
    // or a client that handles one call at a time fails them), last arrival first: each
    // response must still reach the call that sent its request.
    let group = uuid::Uuid::new_v4().to_string();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (up, p, prov, group) = (up.clone(), p.clone(), prov.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            call(
                &up,
                &p,
                &prov,
                "rendezvous",
                json!({"group": group, "n": 8, "tag": i}),
                &[],
            )
            .await
        }));
    }
    let mut arrivals = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r["isError"], json!(false), "{r}");
        assert_eq!(
            r["structuredContent"]["tag"],
            json!(i),
            "a response reached another call"
        );
        arrivals.push(r["structuredContent"]["arrived"].as_u64().unwrap());
    }
    arrivals.sort();
    assert_eq!(arrivals, (0..8).collect::<Vec<u64>>());
    let r = call(&up, &p, &prov, "echo", json!({"k": [1, 2]}), &[])
        .await
        .unwrap();
    assert_eq!(r["structuredContent"], json!({"k": [1, 2]}));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = call_with(
        &up,
        &p,
        &prov,
        "meta",
        json!({}),
        &[],
        Some(tp),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(r["structuredContent"]["traceparent"], tp);
    let err = call(&up, &p, &prov, "fail", json!({"mode": "rpc"}), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Rpc { code: -32001, .. }));
    let err = call_with(
        &up,
        &p,
        &prov,
        "sleep",
        json!({"ms": 3000}),
        &[],
        None,
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert_eq!(err, UpstreamError::Timeout);
    assert_eq!(up.open_connections(), 1, "one child for all of it");
    up.shutdown().await;
}

#[tokio::test]
async fn stdio_child_is_restarted_after_it_is_killed_or_exits() {
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = rust_stdio_provider("local");
    let first = pid_of(&call(&up, &p, &prov, "pid", json!({}), &[]).await.unwrap());
    let status = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the killed child is dead", || process_gone(first)).await;
    let second = pid_of(&call(&up, &p, &prov, "pid", json!({}), &[]).await.unwrap());
    assert_ne!(first, second, "a new child serves the next call");

    // A child that dies mid-call fails that call clearly; the next call gets a new child.
    let err = call(&up, &p, &prov, "exit", json!({}), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");
    let third = pid_of(&call(&up, &p, &prov, "pid", json!({}), &[]).await.unwrap());
    assert_ne!(third, second);
    up.shutdown().await;
    eventually("shutdown kills the child", || process_gone(third)).await;
}

#[tokio::test]
async fn stdio_rotation_replaces_the_child() {
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = rust_stdio_provider("local");
    let a = [env_var("FIXTURE_TOKEN", "one")];
    let b = [env_var("FIXTURE_TOKEN", "two")];
    let old = pid_of(&call(&up, &p, &prov, "pid", json!({}), &a).await.unwrap());
    let r = call(
        &up,
        &p,
        &prov,
        "secret",
        json!({"name": "FIXTURE_TOKEN"}),
        &b,
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "two");
    let new = pid_of(&call(&up, &p, &prov, "pid", json!({}), &b).await.unwrap());
    assert_ne!(old, new);
    eventually("the old child is killed", || process_gone(old)).await;
    assert_eq!(up.open_connections(), 1);
    up.shutdown().await;
}

// --- the official Python SDK ---------------------------------------------------------------

#[tokio::test]
async fn python_sdk_server_over_streamable_http() {
    let Some(py) = python() else { return };
    let server = start_python_http(&py).await;
    let up = test_upstreams(test_config());
    let p = project("acme");
    let prov = http_provider("py", &server.url);
    let creds = [header("X-Upstream-Key", "", "py-http-secret-8")];
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = call_with(
        &up,
        &p,
        &prov,
        "echo",
        json!({"text": "hi"}),
        &creds,
        Some(tp),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(r["structuredContent"], json!({"text": "hi"}));
    let h = call_with(
        &up,
        &p,
        &prov,
        "headers",
        json!({}),
        &creds,
        Some(tp),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(h["structuredContent"]["traceparent"], tp);
    assert_eq!(h["structuredContent"]["mcp-protocol-version"], "2025-11-25");
    let r = call(
        &up,
        &p,
        &prov,
        "leak_nested",
        json!({"name": "x-upstream-key"}),
        &creds,
    )
    .await
    .unwrap();
    assert_eq!(
        r["structuredContent"]["outer"]["list"][0]["deep"],
        "py-http-secret-8"
    );
    let err = call(
        &up,
        &p,
        &prov,
        "leak_error",
        json!({"name": "x-upstream-key"}),
        &creds,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Rpc { code: -32001, message } if message.contains("py-http-secret-8")),
        "{err:?}"
    );
    let r = call(
        &up,
        &p,
        &prov,
        "leak_is_error",
        json!({"name": "x-upstream-key"}),
        &creds,
    )
    .await
    .unwrap();
    assert_eq!(r["isError"], true);
    assert!(text(&r).contains("py-http-secret-8"));
    let r = call(&up, &p, &prov, "blob", json!({"size": 16384}), &creds)
        .await
        .unwrap();
    assert_eq!(text(&r).len(), 16384);
    up.shutdown().await;
}

#[tokio::test]
async fn python_sdk_server_over_stdio() {
    let Some(py) = python() else { return };
    let script = fixture_script();
    assert!(script.exists());
    let _ = py;
    let prov = stdio_provider("py", "python-fixture");
    // The SDK's interpreter may live under a folder only this uid can enter (a per-user
    // Python): this test is about the protocol, so the child runs as this process's uid.
    // Per-tenant uids are proven in `adversarial`.
    let up = test_upstreams(UpstreamConfig {
        stdio_isolation: awooop::gateway::upstream::StdioIsolation::SameUid,
        ..test_config()
    });
    let p = project("acme");
    let creds = [env_var("UPSTREAM_TOKEN", "py-stdio-secret-4")];
    let r = call(&up, &p, &prov, "echo", json!({"text": "hello"}), &creds)
        .await
        .unwrap();
    assert_eq!(r["structuredContent"], json!({"text": "hello"}));
    let r = call(
        &up,
        &p,
        &prov,
        "leak_base64",
        json!({"name": "UPSTREAM_TOKEN"}),
        &creds,
    )
    .await
    .unwrap();
    assert_eq!(text(&r), "cHktc3RkaW8tc2VjcmV0LTQ=");
    let r = call(&up, &p, &prov, "env", json!({}), &creds)
        .await
        .unwrap();
    let names = r["structuredContent"]["names"].as_array().unwrap();
    assert!(names.contains(&json!("UPSTREAM_TOKEN")));
    for forbidden in ["DATABASE_URL", "REDIS_URL", "AWOOOP_GATEWAY_KEY", "CARGO"] {
        assert!(
            !names.contains(&json!(forbidden)),
            "{forbidden} leaked into the child"
        );
    }
    let err = call(&up, &p, &prov, "fail", json!({"mode": "rpc"}), &creds)
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::Rpc { code: -32001, .. }),
        "{err:?}"
    );
    up.shutdown().await;
}

#[tokio::test]
async fn python_sdk_client_talks_to_the_rust_fixture() {
    let Some(py) = python() else { return };
    for sse in [false, true] {
        let fx = FixtureServer::start(FixtureOptions {
            sse,
            require_header: Some(("authorization".into(), "Bearer drv-token".into())),
            ..Default::default()
        })
        .await
        .unwrap();
        let out = run_driver(
            &py,
            &fx.url(),
            Some("drv-token"),
            Some(("echo", json!({"x": 1}))),
        )
        .await
        .unwrap();
        assert_eq!(out["protocol_version"], "2025-11-25");
        assert!(
            out["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("leak_nested"))
        );
        assert_eq!(out["result"]["structuredContent"], json!({"x": 1}));
        let out = run_driver(
            &py,
            &fx.url(),
            Some("drv-token"),
            Some(("fail", json!({"mode": "rpc"}))),
        )
        .await
        .unwrap();
        assert_eq!(out["error"]["code"], -32001);
        // Without the token the official client fails to connect.
        assert!(run_driver(&py, &fx.url(), None, None).await.is_err());
    }
}

#[tokio::test]
async fn typescript_sdk_client_talks_to_the_rust_fixture() {
    let Some(nm) = node_modules() else { return };
    let fx = FixtureServer::start(FixtureOptions {
        sse: true,
        require_header: Some(("authorization".into(), "Bearer ts-token".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let out = run_ts_driver(
        &nm,
        &fx.url(),
        Some("ts-token"),
        Some(("echo", json!({"y": [1]}))),
    )
    .await
    .unwrap();
    assert_eq!(out["protocol_version"], "2025-11-25");
    assert!(out["tools"].as_array().unwrap().contains(&json!("blob")));
    assert_eq!(out["result"]["structuredContent"], json!({"y": [1]}));
    let out = run_ts_driver(
        &nm,
        &fx.url(),
        Some("ts-token"),
        Some(("fail", json!({"mode": "rpc"}))),
    )
    .await
    .unwrap();
    assert_eq!(out["error"]["code"], -32001);
    assert!(
        run_ts_driver(&nm, &fx.url(), Some("wrong"), None)
            .await
            .is_err()
    );
    assert_eq!(
        fx.deleted_sessions(),
        2,
        "the TypeScript client ends its sessions"
    );
}

// --- the gateway core on the real client -----------------------------------------------------

/// The gateway (all gates, credential resolution, redaction, audit) calling real upstreams
/// through `Upstreams`: an HTTP fixture that requires the injected Bearer credential and a
/// stdio fixture that gets it as an env var; both echo it back, and the gateway must redact it.
#[tokio::test]
async fn gateway_calls_real_upstreams_through_the_client_and_redacts_what_they_echo() {
    use awooop::contracts::ContractKind;
    use awooop::coord::Coord;
    use awooop::gateway::audit::CallAudit;
    use awooop::gateway::credentials::{CredentialResolver, LocalPolicy, MemorySecrets};
    use awooop::gateway::keys::GatewayKeys;
    use awooop::gateway::{Caller, Gateway, GatewayConfig};
    use awooop::runtime::TraceContext;
    use awooop::tenancy;
    use std::sync::Arc;

    use crate::support::{TestDb, approve_and_activate, publish};

    let secret = format!(
        "zqE2E-{}/+=Kp",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let fx = FixtureServer::start(FixtureOptions {
        require_header: Some(("authorization".into(), format!("Bearer {secret}"))),
        ..Default::default()
    })
    .await
    .unwrap();
    let t = TestDb::new().await;
    register_test_catalog(&t.db()).await;
    let cp = t.control(Coord::none());
    let project = crate::support::project(&cp, "alpha", 1).await;
    let tools = [
        "secret",
        "leak_text",
        "leak_nested",
        "leak_base64",
        "leak_urlencoded",
    ];
    let mut tool_defs = Vec::new();
    let mut granted = Vec::new();
    for prov in ["web", "local"] {
        for name in tools {
            tool_defs.push(json!({"provider": prov, "name": name, "risk": "read_only",
                "environments": ["dev"], "input_schema": {"type": "object"}}));
            granted.push(format!("{prov}__{name}"));
        }
    }
    let gateway_body = json!({
        "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": "alpha-up", "key": "token"}}}],
        "providers": [
            {"name": "web", "transport": {"type": "streamable_http", "url": fx.url()},
             "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization", "prefix": "Bearer "}}]},
            {"name": "local", "transport": {"type": "stdio", "entry": "rust-fixture"},
             "credentials": [{"credential": "tok", "inject": {"type": "env", "var": "UPSTREAM_TOKEN"}}]}
        ],
        "tools": tool_defs,
        "grants": [{"agent": "triage", "tools": granted, "environments": ["dev"]}]
    });
    let agent_body = json!({
        "display_name": "Triage", "context_domain": "infra", "tools": granted,
        "safety": {"max_risk": "read_only", "max_steps": 8, "max_tokens_per_run": 1000, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "o", "template": "hi"}]}
    });
    tenancy::scope(project.clone(), async {
        for (kind, name, body) in [
            (ContractKind::McpGateway, "default", gateway_body),
            (ContractKind::Agent, "triage", agent_body),
        ] {
            let r = publish(&cp, kind, name, body).await;
            approve_and_activate(&cp, r, 1).await;
        }
    })
    .await;
    let secrets = Arc::new(MemorySecrets::default());
    secrets.put("alpha-up", "token", &secret, Some("alpha"));
    let (audit, _task) = CallAudit::spawn(t.db());
    let upstreams = test_upstreams(test_config());
    let gw = Gateway::new(
        t.db(),
        Coord::none(),
        GatewayKeys::derive("test-gateway-master-key-0123456789abcdef"),
        CredentialResolver::new(Some(secrets), LocalPolicy::default(), Duration::ZERO),
        Arc::new(upstreams.clone()),
        audit,
        GatewayConfig {
            cache_ttl: Duration::ZERO,
            run_liveness_ttl: Duration::ZERO,
            ..GatewayConfig::default()
        },
    );
    let caller = Caller {
        project: project.clone(),
        agent: "triage".into(),
        run_id: None,
        environment: "dev".into(),
        mode: None,
    };
    for (prov, name) in [("web", "authorization"), ("local", "UPSTREAM_TOKEN")] {
        for tool in tools {
            let r = gw
                .call_tool(
                    &caller,
                    &format!("{prov}__{tool}"),
                    Some(json!({"name": name})),
                    None,
                    &TraceContext::generate(),
                )
                .await
                .unwrap_or_else(|e| panic!("{prov}__{tool}: {e:?}"));
            let text = r.to_string();
            assert!(!text.contains(&secret), "{prov}__{tool} leaked: {text}");
            assert_eq!(r["isError"], false, "{prov}__{tool}: {text}");
        }
        // The upstream did receive the credential: `secret` returned something, now redacted.
        let r = gw
            .call_tool(
                &caller,
                &format!("{prov}__secret"),
                Some(json!({"name": name})),
                None,
                &TraceContext::generate(),
            )
            .await
            .unwrap();
        let shown = r["content"][0]["text"].as_str().unwrap_or("");
        assert!(
            !shown.is_empty() && !shown.contains(&secret),
            "{prov}: {shown:?}"
        );
    }
    assert_eq!(
        upstreams.open_connections(),
        2,
        "one HTTP session and one child"
    );
    gw.audit().flush().await;
    upstreams.shutdown().await;
    t.cleanup().await;
}
