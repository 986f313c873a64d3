//! The embedded default for `awooop up` and the CLI: find or start a PostgreSQL to use when no
//! DATABASE_URL is given.
//!
//! Order: (1) DATABASE_URL; (2) a PostgreSQL answering on 127.0.0.1:5432 (database `awooop`
//! is created there); (3) a private throwaway cluster initialised from the PostgreSQL binaries
//! installed on the machine, kept in the state folder and started on a free port. The private
//! cluster is stopped when the returned [`LocalPostgres`] is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::db;

/// A resolved database, possibly backed by a child process.
pub struct LocalPostgres {
    /// Owner URL of the `awooop` database.
    pub url: String,
    /// How it was found, for the start-up banner.
    pub source: &'static str,
    child: Option<Child>,
}

impl LocalPostgres {
    /// Only the runtime role's URL (pods): no owner URL, no migration, nothing started.
    pub fn external(url: &str) -> Self {
        Self {
            url: url.to_string(),
            source: "AWOOOP_APP_DATABASE_URL (runtime role)",
            child: None,
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGINT = PostgreSQL's "fast shutdown": roll back, checkpoint, exit.
            unsafe_kill(child.id(), 2);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Resolve the database to use.
pub async fn resolve(
    database_url: Option<&str>,
    state_dir: &Path,
) -> anyhow::Result<LocalPostgres> {
    if let Some(url) = database_url {
        return Ok(LocalPostgres {
            url: url.to_string(),
            source: "DATABASE_URL",
            child: None,
        });
    }
    let local = "postgres://postgres@127.0.0.1:5432/postgres";
    if tokio::time::timeout(Duration::from_secs(3), db::ensure_database(local, "awooop"))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        return Ok(LocalPostgres {
            url: db::with_database(local, "awooop"),
            source: "PostgreSQL on 127.0.0.1:5432",
            child: None,
        });
    }
    let mut pg = start_private_cluster(&state_dir.join("pg"))
        .context("no DATABASE_URL, nothing answers on 127.0.0.1:5432, and a private cluster could not be started (install the postgresql package)")?;
    let admin = pg.url.clone();
    pg.url = db::ensure_database(&admin, "awooop")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(pg)
}

/// Find the directory with `initdb` and `postgres`.
pub fn find_pg_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    // Debian/Ubuntu keep server binaries out of PATH, one folder per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// initdb (once) into `dir/data` and start `postgres` on a free port bound to 127.0.0.1.
pub fn start_private_cluster(dir: &Path) -> anyhow::Result<LocalPostgres> {
    let bindir = find_pg_bindir().context("PostgreSQL server binaries (initdb) not found")?;
    let data = dir.join("data");
    std::fs::create_dir_all(dir)?;
    // PostgreSQL refuses to run as root; run it as an unprivileged system user then.
    let run_as = run_as_user()?;
    if let Some((uid, gid)) = run_as {
        chown_recursive(dir, uid, gid)?;
    }
    if !data.join("PG_VERSION").exists() {
        let mut cmd = Command::new(bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut cmd, run_as);
        let out = cmd.output().context("failed to run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
    }
    let mut cmd = Command::new(bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(dir)
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(log);
    as_user(&mut cmd, run_as);
    let mut child = cmd.spawn().context("failed to start postgres")?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The port opens while the server is still "starting up" (connections then fail with
    // 57P03): wait until pg_isready (shipped next to postgres) says it accepts connections.
    let ready = || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && Command::new(bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_or(true, |s| s.success())
    };
    loop {
        if ready() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "postgres exited with {status}; see {}",
                dir.join("postgres.log").display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("postgres did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(dir.join("port"), port.to_string())?;
    Ok(LocalPostgres {
        url,
        source: "private cluster in the state folder",
        child: Some(child),
    })
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn run_as_user() -> anyhow::Result<Option<(u32, u32)>> {
    let out = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        let uid = Command::new("id").args(["-u", user]).output()?;
        let gid = Command::new("id").args(["-g", user]).output()?;
        if uid.status.success() && gid.status.success() {
            let uid: u32 = String::from_utf8_lossy(&uid.stdout).trim().parse()?;
            let gid: u32 = String::from_utf8_lossy(&gid.stdout).trim().parse()?;
            return Ok(Some((uid, gid)));
        }
    }
    bail!("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_recursive(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}
