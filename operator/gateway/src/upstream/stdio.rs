//! stdio transport: one child process per pooled connection, newline-delimited JSON-RPC on its
//! stdin/stdout, requests multiplexed by id.
//!
//! * The child starts from an **empty environment** plus a short pass-through list (PATH,
//!   HOME, locale) and the injected credential variables, so the gateway's own secrets
//!   (DATABASE_URL, AWOOOP_GATEWAY_KEY, ...) never reach it.
//! * With [`super::StdioIsolation::TenantUid`] the child runs as its tenant's uid and gid with
//!   no supplementary groups, in `/`: it cannot read `/proc/<pid>/environ` of the platform or
//!   of another tenant's children, nor the platform's private files (mode 0600).
//! * stderr is drained so the child never blocks on a full pipe; only line lengths are logged
//!   (at debug), never the text, which may echo credentials.
//! * A child that dies fails its in-flight calls with `Unavailable`; the next call starts a new
//!   one after a backoff that doubles per crash in a row (reset once a child lived 30 s).
//! * The child is killed when the connection is closed or dropped.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;

use super::protocol::{self, Incoming};
use super::{UpstreamConfig, UpstreamError};
use awooop_core::backoff::Backoff;

/// A child that lived this long is considered healthy: its crash starts a fresh backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

pub struct ChildSpec {
    pub command: String,
    pub args: Vec<String>,
    /// Injected credential variables (values are secrets).
    pub env: Vec<(String, String)>,
    /// uid and gid to run as (None: the platform's own).
    pub uid: Option<u32>,
    /// `project/provider`, for logs.
    pub label: String,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, UpstreamError>>>>;

struct Shared {
    pending: Pending,
    alive: AtomicBool,
    /// Why the child stopped answering, for the calls that find it dead.
    stdin: tokio::sync::Mutex<ChildStdin>,
}

impl Shared {
    fn fail_all(&self, err: UpstreamError) {
        self.alive.store(false, Ordering::SeqCst);
        let pending: Vec<_> = self.pending.lock().expect("pending lock").drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(err.clone()));
        }
    }

    async fn write_line(self: &Arc<Self>, mut line: Vec<u8>) -> Result<(), UpstreamError> {
        line.push(b'\n');
        // Written by a task of its own: `write_all` is not cancel-safe. A caller dropped while
        // its line was half written (a large request into a full pipe, and a `/mcp` client
        // hanging up or a timeout) left the half in the pipe, the next caller's line completed
        // it, and the child read the two as one broken message: the next call was lost and
        // waited for its timeout.
        let shared = self.clone();
        let task = tokio::spawn(async move {
            let mut stdin = shared.stdin.lock().await;
            let res = async {
                stdin.write_all(&line).await?;
                stdin.flush().await
            }
            .await;
            res.map_err(|_| {
                shared.alive.store(false, Ordering::SeqCst);
                UpstreamError::Unavailable("the stdio upstream closed its input".into())
            })
        });
        task.await.unwrap_or_else(|_| {
            Err(UpstreamError::Unavailable(
                "the stdio upstream's writer stopped".into(),
            ))
        })
    }
}

struct Child {
    shared: Arc<Shared>,
    process: Mutex<Option<tokio::process::Child>>,
    spawned: Instant,
    version: &'static str,
}

impl Child {
    /// Alive as far as we know: its output is open and the process has not exited (a
    /// `waitpid(WNOHANG)`, so a killed child is noticed before a request is written to it,
    /// even when its closed stdout has not been read yet).
    fn alive(&self) -> bool {
        if !self.shared.alive.load(Ordering::SeqCst) {
            return false;
        }
        let mut p = self.process.lock().expect("process lock");
        let exited = match p.as_mut() {
            Some(p) => !matches!(p.try_wait(), Ok(None)),
            None => true,
        };
        if exited {
            self.shared.alive.store(false, Ordering::SeqCst);
        }
        !exited
    }

    fn kill(&self) {
        self.shared.alive.store(false, Ordering::SeqCst);
        if let Some(mut p) = self.process.lock().expect("process lock").take() {
            let _ = p.start_kill();
            // Reap it in the background so no zombie is left behind.
            tokio::spawn(async move {
                let _ = p.wait().await;
            });
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.get_mut().expect("process lock").take() {
            let _ = p.start_kill();
        }
    }
}

struct Restart {
    crashes_in_a_row: u32,
    last_spawn: Option<Instant>,
    closed: bool,
}

pub struct StdioUpstream {
    spec: ChildSpec,
    base_env: Vec<(String, String)>,
    max_line: usize,
    backoff: Duration,
    backoff_max: Duration,
    current: RwLock<Option<Arc<Child>>>,
    restart: tokio::sync::Mutex<Restart>,
    next_id: AtomicU64,
}

/// Removes a pending request when the call gives up (timeout or cancellation) and tells the
/// child, so neither side keeps state for it.
struct PendingGuard<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    done: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let removed = self
            .shared
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.id);
        if removed.is_some() && self.shared.alive.load(Ordering::SeqCst) {
            let shared = self.shared.clone();
            let id = self.id;
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = shared.write_line(protocol::cancelled(id)).await;
                });
            }
        }
    }
}

impl StdioUpstream {
    pub fn new(spec: ChildSpec, cfg: &UpstreamConfig) -> Self {
        let base_env = cfg
            .child_env_passthrough
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        Self {
            spec,
            base_env,
            max_line: cfg.max_response_bytes,
            backoff: cfg.restart_backoff,
            backoff_max: cfg.restart_backoff_max,
            current: RwLock::new(None),
            restart: tokio::sync::Mutex::new(Restart {
                crashes_in_a_row: 0,
                last_spawn: None,
                closed: false,
            }),
            next_id: AtomicU64::new(1),
        }
    }

    /// The negotiated protocol version of the running child, if any.
    pub fn protocol_version(&self) -> Option<&'static str> {
        self.current
            .read()
            .expect("child lock")
            .as_ref()
            .map(|c| c.version)
    }

    pub async fn call(
        &self,
        tool: &str,
        arguments: &Map<String, Value>,
        traceparent: Option<&str>,
        idempotency_key: Option<&str>,
        _deadline: tokio::time::Instant,
    ) -> Result<Value, UpstreamError> {
        let child = self.child().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request(
            &child.shared,
            id,
            protocol::tools_call(id, tool, arguments, traceparent, idempotency_key),
        )
        .await
    }

    pub async fn close(&self) {
        self.restart.lock().await.closed = true;
        if let Some(c) = self.current.write().expect("child lock").take() {
            c.kill();
        }
    }

    /// The running child, or a new one (after the backoff when the last one crashed).
    async fn child(&self) -> Result<Arc<Child>, UpstreamError> {
        if let Some(c) = self.current.read().expect("child lock").as_ref()
            && c.alive()
        {
            return Ok(c.clone());
        }
        let mut restart = self.restart.lock().await;
        if restart.closed {
            return Err(UpstreamError::Unavailable(
                "the stdio upstream connection was closed".into(),
            ));
        }
        let previous = self.current.read().expect("child lock").clone();
        if let Some(c) = &previous {
            if c.alive() {
                return Ok(c.clone());
            }
            c.kill();
            if c.spawned.elapsed() >= HEALTHY_AFTER {
                restart.crashes_in_a_row = 0;
            }
            let delay =
                Backoff::new(self.backoff, self.backoff_max).delay(restart.crashes_in_a_row);
            restart.crashes_in_a_row = restart.crashes_in_a_row.saturating_add(1);
            if let Some(last) = restart.last_spawn {
                tokio::time::sleep_until((last + delay).into()).await;
            }
            tracing::info!(
                upstream = %self.spec.label,
                crashes_in_a_row = restart.crashes_in_a_row,
                "restarting stdio upstream"
            );
        }
        restart.last_spawn = Some(Instant::now());
        let child = Arc::new(self.spawn().await?);
        *self.current.write().expect("child lock") = Some(child.clone());
        Ok(child)
    }

    async fn spawn(&self) -> Result<Child, UpstreamError> {
        let mut cmd = Command::new(&self.spec.command);
        cmd.args(&self.spec.args)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .kill_on_drop(true);
        if let Some(uid) = self.spec.uid {
            // gid first, then uid (std does setgroups([]) when started as root, then setgid,
            // then setuid): the child keeps no group or capability of the platform.
            cmd.gid(uid).uid(uid);
        }
        let mut process = cmd.spawn().map_err(|e| {
            UpstreamError::Unavailable(format!("cannot start the stdio upstream: {}", e.kind()))
        })?;
        let stdin = process.stdin.take().expect("piped stdin");
        let stdout = process.stdout.take().expect("piped stdout");
        let stderr = process.stderr.take().expect("piped stderr");
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            stdin: tokio::sync::Mutex::new(stdin),
        });
        tokio::spawn(read_stdout(
            BufReader::new(stdout),
            shared.clone(),
            self.max_line,
            self.spec.label.clone(),
        ));
        tokio::spawn(drain_stderr(
            BufReader::new(stderr),
            self.spec.label.clone(),
        ));
        let mut child = Child {
            shared,
            process: Mutex::new(Some(process)),
            spawned: Instant::now(),
            version: protocol::PROTOCOL_LATEST,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let init = request(&child.shared, id, protocol::initialize(id)).await;
        let result = match init {
            Ok(r) => r,
            Err(UpstreamError::Rpc { code, .. }) => {
                child.kill();
                return Err(UpstreamError::Protocol(format!(
                    "initialize failed with JSON-RPC error {code}"
                )));
            }
            Err(e) => {
                child.kill();
                return Err(e);
            }
        };
        child.version = match protocol::negotiated(&result) {
            Ok(v) => v,
            Err(e) => {
                child.kill();
                return Err(e);
            }
        };
        child.shared.write_line(protocol::initialized()).await?;
        tracing::debug!(upstream = %self.spec.label, version = child.version, "stdio upstream started");
        Ok(child)
    }
}

/// Send one request and wait for its response (the caller bounds the wait).
async fn request(shared: &Arc<Shared>, id: u64, body: Vec<u8>) -> Result<Value, UpstreamError> {
    let (tx, rx) = oneshot::channel();
    shared.pending.lock().expect("pending lock").insert(id, tx);
    let mut guard = PendingGuard {
        shared,
        id,
        done: false,
    };
    if !shared.alive.load(Ordering::SeqCst) {
        return Err(UpstreamError::Unavailable(
            "the stdio upstream exited".into(),
        ));
    }
    shared.write_line(body).await?;
    let res = rx.await;
    guard.done = true;
    match res {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Unavailable(
            "the stdio upstream exited".into(),
        )),
    }
}

/// Read one `\n`-terminated line of at most `max` bytes into `buf`. Returns Ok(false) at EOF,
/// Err(()) when the line is longer than `max`.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Result<bool, ()>> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Ok(!buf.is_empty()));
        }
        let (take, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max + 1 {
            return Ok(Err(()));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            return Ok(Ok(true));
        }
    }
}

async fn read_stdout<R: AsyncBufRead + Unpin>(
    mut r: R,
    shared: Arc<Shared>,
    max: usize,
    label: String,
) {
    let mut buf = Vec::new();
    let why = loop {
        match read_line_limited(&mut r, &mut buf, max).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Err(_) => {
                break UpstreamError::Unavailable("the stdio upstream exited".into());
            }
            Ok(Err(())) => {
                break UpstreamError::Protocol(format!(
                    "the stdio upstream sent a line longer than {max} bytes"
                ));
            }
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(line) else {
            // Non-JSON on stdout breaks the protocol; keep going (some servers print banners)
            // but say so, without the content.
            tracing::debug!(upstream = %label, len = line.len(), "stdio upstream wrote a non-JSON line");
            continue;
        };
        match protocol::classify(msg) {
            Incoming::Response { id, outcome } => {
                let tx = shared.pending.lock().expect("pending lock").remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            Incoming::Request { id, method } => {
                let _ = shared
                    .write_line(protocol::answer_server_request(&id, &method))
                    .await;
            }
            Incoming::Other => {}
        }
    };
    tracing::debug!(upstream = %label, "stdio upstream output closed");
    shared.fail_all(why);
}

async fn drain_stderr<R: AsyncBufRead + Unpin>(mut r: R, label: String) {
    let mut buf = Vec::new();
    let mut lines = 0u64;
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                lines += 1;
                // Length only: stderr may echo the injected credentials.
                tracing::debug!(upstream = %label, bytes = n, "stdio upstream stderr line");
            }
        }
        if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
    }
    tracing::debug!(upstream = %label, lines, "stdio upstream stderr closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_line_limited_table() {
        type Case<'a> = (&'a [u8], usize, Vec<Result<&'a [u8], ()>>);
        let cases: [Case; 3] = [
            (b"a\nbb\n", 10, vec![Ok(b"a\n"), Ok(b"bb\n")]),
            (b"abc", 10, vec![Ok(b"abc")]),
            (b"toolong\n", 3, vec![Err(())]),
        ];
        for (input, max, want) in cases {
            let mut r = BufReader::with_capacity(2, input);
            let mut buf = Vec::new();
            for w in want {
                let got = read_line_limited(&mut r, &mut buf, max).await.unwrap();
                match w {
                    Ok(line) => {
                        assert_eq!(got, Ok(true));
                        assert_eq!(buf, line);
                    }
                    Err(()) => assert_eq!(got, Err(())),
                }
            }
        }
    }

    /// A line whose writer is dropped half way (the pipe full, the caller gone) is still
    /// written whole, so the next line stays a message of its own. Before the fix the child
    /// read the first 64 KiB of the dropped line followed by the next line, as one line.
    #[tokio::test]
    async fn a_line_whose_writer_is_dropped_is_still_written_whole() {
        // The child reads nothing for a while: the first line fills the pipe and waits.
        let mut process = Command::new("sh")
            .args(["-c", "sleep 0.5; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            stdin: tokio::sync::Mutex::new(process.stdin.take().unwrap()),
        });
        // The child's output is read all along (its pipe must not fill up either).
        let mut out = BufReader::new(process.stdout.take().unwrap());
        let reader = tokio::spawn(async move {
            let mut lines = Vec::new();
            loop {
                let mut line = Vec::new();
                if out.read_until(b'\n', &mut line).await.unwrap() == 0 {
                    return lines;
                }
                lines.push(line);
            }
        });
        let big = vec![b'a'; 256 * 1024];
        let dropped =
            tokio::time::timeout(Duration::from_millis(100), shared.write_line(big.clone())).await;
        assert!(dropped.is_err(), "the pipe should have been full");
        shared.write_line(b"next".to_vec()).await.unwrap();
        // Both writes are over (the second waited for the first's lock): end the input.
        drop(shared);
        let lines = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            lines[0].len(),
            big.len() + 1,
            "the first line is the dropped one, whole"
        );
        assert_eq!(lines[1], b"next\n");
        assert_eq!(lines.len(), 2);
    }
}
