//! Helpers for tests that talk MCP to real peers: the official Python SDK (`mcp` 2.x, installed
//! by scripts/test.sh into `.tools/venv`, found through `AWOOOP_TEST_PYTHON`), its fixture
//! server (tests/mcp/fixture_server.py, stdio or Streamable HTTP) and its client driver
//! (tests/mcp/client_driver.py), plus providers for the Rust fixture
//! (`awooop::gateway::upstream::fixture`, `awooop mcp-fixture --stdio`).
//!
//! Without Python or Node these tests fail under scripts/test.sh and CI; elsewhere they are
//! skipped, and every skip is counted (see `crate::support::require_tool`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use awooop::contracts::{Injection, McpProvider};
use awooop::gateway::upstream::Injected;
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

pub fn stdio_provider(name: &str, command: &str, args: &[&str]) -> McpProvider {
    serde_json::from_value(json!({
        "name": name,
        "transport": {"type": "stdio", "command": command, "args": args},
    }))
    .expect("provider")
}

/// The Rust fixture over stdio (`awooop mcp-fixture --stdio`).
pub fn rust_stdio_provider(name: &str) -> McpProvider {
    stdio_provider(name, AWOOOP_BIN, &["mcp-fixture", "--stdio"])
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
