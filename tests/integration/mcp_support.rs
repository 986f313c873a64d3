//! Helpers for tests that talk MCP to real peers: the official Python SDK (`mcp` 2.x, installed
//! by scripts/test.sh into `.tools/venv`, found through `AWOOOP_TEST_PYTHON`), its fixture
//! server (tests/mcp/fixture_server.py, stdio or Streamable HTTP) and its client driver
//! (tests/mcp/client_driver.py), plus providers for the Rust fixture
//! (`awooop_testkit::fixture`, `awooop mcp-fixture --stdio`).
//!
//! Without Python or Node these tests fail under scripts/test.sh and CI; elsewhere they are
//! skipped, and every skip is counted (see `crate::support::require_tool`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use awooop::contracts::{Injection, McpProvider};
use awooop::gateway::upstream::{Injected, StdioIsolation, UpstreamConfig, Upstreams};
use awooop::policy::PolicySource;
use awooop::policy::catalog::CatalogEntry;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const AWOOOP_BIN: &str = env!("CARGO_BIN_EXE_awooop");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture_script() -> PathBuf {
    repo().join("tests/mcp/fixture_server.py")
}

pub fn driver_script() -> PathBuf {
    repo().join("tests/mcp/client_driver.py")
}

/// The Python interpreter with the `mcp` package: `AWOOOP_TEST_PYTHON`, else `.tools/venv`.
/// Missing: the test fails under scripts/test.sh and CI, else the skip is recorded and counted
/// ([`crate::support::require_tool`]).
#[track_caller]
pub fn python() -> Option<PathBuf> {
    let found = if let Some(p) = std::env::var_os("AWOOOP_TEST_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "AWOOOP_TEST_PYTHON={} does not exist",
            p.display()
        );
        Some(p)
    } else {
        Some(repo().join(".tools/venv/bin/python")).filter(|p| p.exists())
    };
    crate::support::require_tool(
        "Python with the mcp package",
        "run scripts/test.sh, or set AWOOOP_TEST_PYTHON",
        found,
    )
}

/// `node_modules` holding the official TypeScript SDK: `AWOOOP_TEST_NODE_MODULES`, else
/// `.tools/node/node_modules`; and `node` on PATH. Missing: as for [`python`].
#[track_caller]
pub fn node_modules() -> Option<PathBuf> {
    let found = if let Some(p) = std::env::var_os("AWOOOP_TEST_NODE_MODULES") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "AWOOOP_TEST_NODE_MODULES={} does not exist",
            p.display()
        );
        Some(p)
    } else {
        Some(repo().join(".tools/node/node_modules"))
            .filter(|p| p.join("@modelcontextprotocol/sdk").exists())
    };
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    crate::support::require_tool(
        "Node.js with the TypeScript MCP SDK",
        "run scripts/test.sh, or set AWOOOP_TEST_NODE_MODULES and put node on PATH",
        found.filter(|_| node),
    )
}

/// Run the official TypeScript client (tests/mcp/ts_client_driver.mjs) against `url`; same
/// output as [`run_driver`].
pub async fn run_ts_driver(
    node_modules: &PathBuf,
    url: &str,
    token: Option<&str>,
    tool: Option<(&str, Value)>,
) -> Result<Value, String> {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("tests/mcp/ts_client_driver.mjs"))
        .arg(url)
        .env("AWOOOP_TEST_NODE_MODULES", node_modules);
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    if let Some((name, args)) = tool {
        cmd.arg("--tool")
            .arg(name)
            .arg("--args")
            .arg(args.to_string());
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| "the TypeScript client driver did not finish within 60 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A provider entry of an MCP Gateway contract (deserialized like the real contract).
pub fn http_provider(name: &str, url: &str) -> McpProvider {
    serde_json::from_value(json!({
        "name": name,
        "transport": {"type": "streamable_http", "url": url},
    }))
    .expect("provider")
}

/// A stdio provider naming the catalog entry `entry` (see [`test_catalog`]).
pub fn stdio_provider(name: &str, entry: &str) -> McpProvider {
    serde_json::from_value(json!({
        "name": name,
        "transport": {"type": "stdio", "entry": entry},
    }))
    .expect("provider")
}

/// The Rust fixture over stdio (`awooop mcp-fixture --stdio`, catalog entry `rust-fixture`).
pub fn rust_stdio_provider(name: &str) -> McpProvider {
    stdio_provider(name, "rust-fixture")
}

fn catalog_entry(name: &str, command: &str, args: &[&str], env: &[&str]) -> CatalogEntry {
    CatalogEntry {
        name: name.into(),
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env_allow: env.iter().map(|a| a.to_string()).collect(),
        description: String::new(),
    }
}

/// The stdio catalog of the tests: `rust-fixture` (`awooop mcp-fixture --stdio`),
/// `python-fixture` (tests/mcp/fixture_server.py over stdio, when Python is there) and
/// `missing` (a command that does not exist).
pub fn test_catalog() -> Vec<CatalogEntry> {
    let env = ["FIXTURE_TOKEN", "UPSTREAM_TOKEN", "X_KEY"];
    let mut v = vec![
        catalog_entry(
            "rust-fixture",
            AWOOOP_BIN,
            &["mcp-fixture", "--stdio"],
            &env,
        ),
        catalog_entry("missing", "/nonexistent/awooop-no-such-server", &[], &[]),
    ];
    let py = std::env::var_os("AWOOOP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/venv/bin/python"));
    v.push(catalog_entry(
        "python-fixture",
        py.to_str().expect("utf-8 path"),
        &[fixture_script().to_str().expect("utf-8 path"), "stdio"],
        &env,
    ));
    v
}

/// Register [`test_catalog`] as the platform administrator (contracts naming it can publish).
pub async fn register_test_catalog(db: &awooop::tenancy::Db) {
    for e in test_catalog() {
        awooop::policy::catalog_put(db, "test-admin", &e)
            .await
            .expect("catalog entry");
    }
}

/// The upstream pool's settings in tests: stdio children as their tenant's uid when the tests
/// run as root (CI), else as this process's uid (a developer's machine).
pub fn test_config() -> UpstreamConfig {
    UpstreamConfig {
        stdio_isolation: if awooop::policy::running_as_root() {
            StdioIsolation::TenantUid {
                base: awooop::gateway::upstream::DEFAULT_UID_BASE,
            }
        } else {
            StdioIsolation::SameUid
        },
        ..UpstreamConfig::default()
    }
}

/// The platform policy of upstream tests: [`test_catalog`], and loopback allowed for every
/// project (the fixtures listen on 127.0.0.1), as an administrator would allow it explicitly.
pub fn test_policy() -> PolicySource {
    PolicySource::fixed(test_catalog(), &[], true)
}

/// A pool under [`test_policy`].
pub fn test_upstreams(cfg: UpstreamConfig) -> Upstreams {
    Upstreams::guarded(cfg, test_policy())
}

/// The egress policy alone, loopback allowed (for `HttpSession::new`).
pub fn loopback_egress() -> std::sync::Arc<awooop::policy::egress::EgressPolicy> {
    std::sync::Arc::new(awooop::policy::egress::EgressPolicy::default().allow_loopback())
}

pub fn header(name: &str, prefix: &str, value: &str) -> Injected {
    Injected {
        inject: Injection::Header {
            name: name.into(),
            prefix: prefix.into(),
        },
        value: value.into(),
    }
}

pub fn env_var(var: &str, value: &str) -> Injected {
    Injected {
        inject: Injection::Env { var: var.into() },
        value: value.into(),
    }
}

/// The Python fixture server over Streamable HTTP; killed on drop.
pub struct PyHttpServer {
    pub url: String,
    _child: tokio::process::Child,
}

/// Start tests/mcp/fixture_server.py over Streamable HTTP on 127.0.0.1 (a free port).
pub async fn start_python_http(python: &PathBuf) -> PyHttpServer {
    let mut child = tokio::process::Command::new(python)
        .arg(fixture_script())
        .arg("http")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python fixture server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.expect("read") {
            if let Some(p) = l.strip_prefix("PORT=") {
                return p.trim().to_string();
            }
        }
        panic!("the Python fixture server exited before listening");
    })
    .await
    .expect("the Python fixture server did not start within 60 s");
    PyHttpServer {
        url: format!("http://127.0.0.1:{port}/mcp"),
        _child: child,
    }
}

/// Run the official Python client against `url`: list tools, call `tool` with `args`.
/// Returns the driver's JSON (`protocol_version`, `tools`, `result`, `error`).
pub async fn run_driver(
    python: &PathBuf,
    url: &str,
    token: Option<&str>,
    tool: Option<(&str, Value)>,
) -> Result<Value, String> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(driver_script()).arg(url);
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    if let Some((name, args)) = tool {
        cmd.arg("--tool")
            .arg(name)
            .arg("--args")
            .arg(args.to_string());
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| "the Python client driver did not finish within 60 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}
