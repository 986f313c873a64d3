//! The platform's PostgreSQL connections: how they are opened, checked and handed out.
//!
//! They turn Nagle's algorithm off (TCP_NODELAY), run without JIT, are checked only when idle
//! for a while, survive the server ending its sessions, and never carry a transaction (with its
//! tenant setting) from one borrower to the next, even when a begin is cancelled in flight
//! (sqlx-postgres 0.9.0, patched; operator/vendor/README.md).
//!
//! sqlx-core 0.9.0 stopped doing so; the workspace patches it (operator/vendor/README.md). With
//! Nagle on, a statement that leaves in more than one piece (the hub's group commit, a worker's
//! completion batch) waits for the server's delayed ACK: 24 ms instead of 3 for a 32-webhook
//! batch (docs/benchmarks.md, "Nagle (session 9)"). Timing is a benchmark's business; this test
//! checks the socket option itself, read back from the sockets the pools really use.

use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::time::Duration;

use std::sync::Arc;

use awooop::coord::Coord;
use awooop::listen::{Signal, Subscription};
use awooop::notify;
use awooop::runtime::executor::{GuardedGateway, NoGateway, ScriptedExecutor};
use awooop::runtime::worker::{Worker, WorkerConfig, shutdown_channel};

use crate::support::{TestDb, base_url};

/// TCP_NODELAY of this process's TCP socket whose local port is `port` (None: no such socket).
fn nodelay_of_local_port(port: u16) -> Option<bool> {
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.unwrap();
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is open (listed just now) and only borrowed: ManuallyDrop
        // keeps the TcpStream from closing it. Non-TCP sockets fail `local_addr` and are skipped.
        let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        if s.local_addr().is_ok_and(|a| a.port() == port) {
            return Some(s.nodelay().expect("getsockopt TCP_NODELAY"));
        }
    }
    None
}

/// The client port PostgreSQL sees for this connection (our socket's local port on loopback).
async fn client_port(conn: &mut sqlx::PgConnection) -> u16 {
    let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(conn)
        .await
        .unwrap();
    let port = port.expect("the tests reach PostgreSQL over TCP (DATABASE_URL with a host)");
    u16::try_from(port).unwrap()
}

#[tokio::test]
async fn pool_connections_disable_nagle() {
    let db = TestDb::new().await;

    // The probe can fail: a plain socket to the same server has Nagle on.
    let addr = {
        let opts: sqlx::postgres::PgConnectOptions = base_url().parse().unwrap();
        format!("{}:{}", opts.get_host(), opts.get_port())
    };
    let plain = TcpStream::connect(&addr).unwrap();
    assert_eq!(
        nodelay_of_local_port(plain.local_addr().unwrap().port()),
        Some(false),
        "a socket opened without TCP_NODELAY must read back false"
    );
    drop(plain);

    // The runtime role's pool and the owner's pool (migrations, benchmarks), held open.
    let mut app = db.app.acquire().await.unwrap();
    let mut owner = db.owner.acquire().await.unwrap();
    for (who, conn) in [("app", &mut *app), ("owner", &mut *owner)] {
        let port = client_port(conn).await;
        assert_eq!(
            nodelay_of_local_port(port),
            Some(true),
            "the {who} pool's connection (local port {port}) has Nagle's algorithm on"
        );
    }
    // A connection opened outside the pools (the notifier's and the listeners' kind).
    let mut single = db.superuser().await;
    let port = client_port(&mut single).await;
    assert_eq!(nodelay_of_local_port(port), Some(true));
    drop((app, owner, single));
    db.cleanup().await;
}

/// The runtime pool's sessions do not JIT-compile (awooop_store::db::connect_app): a generic
/// plan's estimate can pass `jit_above_cost` for a statement that does almost nothing, and the
/// compilation then costs every execution tens of milliseconds. The server's default is on.
#[tokio::test]
async fn app_pool_sessions_run_without_jit() {
    let db = TestDb::new().await;
    let mut su = db.superuser().await;
    let server_default: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&mut su)
        .await
        .unwrap();
    let mut app = db.app.acquire().await.unwrap();
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&mut *app)
        .await
        .unwrap();
    assert_eq!(jit, "off", "server default: {server_default}");
    drop((app, su));
    db.cleanup().await;
}

/// When the server last answered on the session `pid` (`pg_stat_activity.state_change`: the
/// backend stamps it each time it reports ready for a query, a bare `Sync` included).
async fn last_ready(su: &mut sqlx::PgConnection, pid: i32) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT state_change FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(su)
        .await
        .unwrap()
}

/// The runtime pool checks an idle connection with a round trip only when it sat idle for
/// `PING_IF_IDLE_FOR` (sqlx's default pings on every acquire: one more round trip per
/// transaction), and a connection that died while idle is still replaced, not handed out.
#[tokio::test]
async fn app_pool_checks_only_connections_idle_for_a_while() {
    use awooop::db::PING_IF_IDLE_FOR;
    let db = TestDb::new().await;
    let mut su = db.superuser().await;
    // One connection, so every acquire gets the same session.
    let pool = awooop::db::connect_app(&db.url, 1).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Let the release check (a round trip off the caller's path) finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = last_ready(&mut su, pid).await;

    // Acquired a moment after its last use: handed out as it is, nothing sent.
    let conn = pool.acquire().await.unwrap();
    assert_eq!(
        last_ready(&mut su, pid).await,
        before,
        "acquiring a connection idle for 200 ms cost a round trip"
    );
    drop(conn);
    tokio::time::sleep(PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
    let idle = last_ready(&mut su, pid).await;

    // Idle for longer than the threshold: checked before it is handed out.
    let conn = pool.acquire().await.unwrap();
    assert!(
        last_ready(&mut su, pid).await > idle,
        "a connection idle for {PING_IF_IDLE_FOR:?} was handed out unchecked"
    );
    drop(conn);

    // It dies while idle (a server restart, a proxy's idle timeout): the check replaces it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.terminate_backend(pid).await;
    tokio::time::sleep(PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
    let after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a connection that died while idle must be replaced, not handed out");
    assert_ne!(after, pid);
    pool.close().await;
    drop(su);
    db.cleanup().await;
}

/// After the server ended every session (a restart, a failover, `pg_terminate_backend`), the
/// next transactions still begin. The pool hands out a connection used within
/// `PING_IF_IDLE_FOR` without a check, so each of them may first be handed a dead connection;
/// its `BEGIN` fails before anything ran, and the platform begins again on another one instead
/// of failing the caller's request or run.
#[tokio::test]
async fn transactions_begin_after_the_server_ended_every_session() {
    use awooop::tenancy::{self, Db, ProjectId};
    let db = TestDb::new().await;
    let pool = awooop::db::connect_app(&db.url, 4).await.unwrap();
    // Four live connections, all back in the pool, each used a moment ago.
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| pool.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    let mut waited = 0;
    while pool.num_idle() < 4 {
        assert!(waited < 200, "the pool never got its connections back");
        waited += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Ours, and the test database's own pool's; gone (their FATAL sent) well inside
    // PING_IF_IDLE_FOR.
    let ended = db.end_app_sessions().await;
    assert!(ended >= 4, "{ended} sessions ended");
    assert_eq!(
        pool.num_idle(),
        4,
        "the dead connections are still idle in the pool"
    );

    // Every kind of transaction the platform opens, each on a pool whose idle connections died.
    let d = Db::new(pool.clone());
    let alpha = ProjectId::parse("alpha").unwrap();
    let one = |mut tx: sqlx::Transaction<'static, sqlx::Postgres>| async move {
        let n: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        n
    };
    let tx = tenancy::scope(alpha.clone(), d.tenant())
        .await
        .expect("a tenant transaction begins after the server ended the pool's sessions");
    assert_eq!(one(tx).await, 1);
    drop(tenancy::scope(alpha, d.tenant()).await.unwrap());
    assert_eq!(one(tenancy::worker_tx(&pool).await.unwrap()).await, 1);
    assert_eq!(one(tenancy::operator_tx(&pool).await.unwrap()).await, 1);
    pool.close().await;
    db.cleanup().await;
}

/// What the next borrower of `pool`'s connection finds after the last one was given back: the
/// tenant setting an autocommit statement sees, whether that statement ran inside a transaction
/// someone else opened (`now()` is the transaction's start: in a transaction of its own,
/// microseconds before the statement reads the clock; in one left open, before the pause
/// below), and how many of the platform's sessions on this database the server reports
/// inside a transaction block.
async fn left_behind(
    db: &TestDb,
    pool: &sqlx::PgPool,
    su: &mut sqlx::PgConnection,
) -> (Option<String>, bool, i64) {
    // The release (sqlx checks the connection before it is idle again) runs in a task of its
    // own; a transaction left open would have started before this pause.
    let mut waited = 0;
    while pool.num_idle() < pool.size() as usize {
        assert!(
            waited < 400,
            "the connection never came back to the pool: {} idle of {}",
            pool.num_idle(),
            pool.size()
        );
        waited += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (setting, inside): (Option<String>, bool) = sqlx::query_as(
        "SELECT nullif(current_setting('awooop.project_id', true), ''), \
                now() < clock_timestamp() - interval '150 milliseconds'",
    )
    .fetch_one(pool)
    .await
    .expect("the next borrower's statement runs");
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'awooop' AND state LIKE 'idle in transaction%'",
    )
    .bind(&db.name)
    .fetch_one(su)
    .await
    .unwrap();
    (setting, inside, open)
}

/// A transaction whose `BEGIN` is cancelled while in flight (an API client that hung up, a
/// timeout, an aborted task: each drops the future holding it) leaves nothing open on the
/// pooled connection, and neither does a session someone left inside a transaction block
/// behind sqlx's back.
///
/// sqlx-postgres 0.9.0 counted a transaction only once the server had answered its `BEGIN`,
/// so the drop guard of a begin cancelled in between had nothing to roll back; the pool's
/// release check (a bare round trip) never read the transaction status the server reports.
/// The session went back to the pool inside the transaction, with the tenant's
/// `awooop.project_id` set: the next borrower's statements ran in that tenant's scope and in
/// a transaction nobody would commit (its autocommitted writes lost at the next rollback).
/// The bench's killed worker did it (`WARNING: there is already a transaction in progress`);
/// operator/vendor/README.md has the patch.
#[tokio::test]
async fn a_cancelled_begin_leaves_no_transaction_on_the_pooled_connection() {
    use std::future::Future;
    use std::pin::Pin;

    use awooop::tenancy::{self, Db, ProjectId};
    let db = TestDb::new().await;
    let mut su = db.superuser().await;
    // One connection, so every borrower gets the session the last one gave back.
    let pool = awooop::db::connect_app(&db.url, 1).await.unwrap();
    let d = Db::new(pool.clone());
    let alpha = ProjectId::parse("alpha").unwrap();
    assert_eq!(left_behind(&db, &pool, &mut su).await, (None, false, 0));

    // Each kind of begin the platform uses: on the pool (tenant, the run writers' deferred
    // one, the workers'), and on a connection a batch writer holds.
    type Begin<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
    let begin = |kind: usize| -> Begin<'_> {
        match kind {
            0 => Box::pin(tenancy::scope(alpha.clone(), async {
                drop(d.tenant().await);
            })),
            1 => Box::pin(tenancy::scope(alpha.clone(), async {
                drop(d.tenant_deferred().await);
            })),
            2 => Box::pin(async {
                drop(tenancy::worker_tx(&pool).await);
            }),
            _ => Box::pin(tenancy::scope(alpha.clone(), async {
                let mut conn = pool.acquire().await.unwrap();
                drop(tenancy::tenant_on(&mut conn).await);
            })),
        }
    };
    let kinds = [
        "Db::tenant",
        "Db::tenant_deferred",
        "worker_tx",
        "tenant_on",
    ];
    let mut cancelled = Vec::new();
    for (kind, what) in kinds.iter().enumerate() {
        // One poll: the pool hands out its idle connection (used a moment ago, so unchecked),
        // the `BEGIN` goes out, and the future waits for the server's answer. Then it is
        // dropped, as a hung-up client's handler is. On a fast loopback the answer can already
        // be there when the future first reads (it then simply completes), so each kind is
        // tried until one attempt is caught in flight.
        for _ in 0..50 {
            let mut b = begin(kind);
            if futures::poll!(b.as_mut()).is_ready() {
                continue;
            }
            drop(b);
            cancelled.push(*what);
            assert_eq!(
                left_behind(&db, &pool, &mut su).await,
                (None, false, 0),
                "after a cancelled {what}: (tenant setting seen, inside a leftover \
                 transaction, sessions idle in a transaction)"
            );
            break;
        }
    }
    assert!(
        cancelled.len() >= 3,
        "the begins completed within one poll, so nothing was cancelled in flight: {cancelled:?}"
    );

    // A transaction block opened outside sqlx's bookkeeping (a multi-statement simple query)
    // and given back open: the release check does not hand the session out again.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; SET LOCAL awooop.project_id = 'alpha'")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(left_behind(&db, &pool, &mut su).await, (None, false, 0));
    // The same block, aborted by an error inside it.
    let mut conn = pool.acquire().await.unwrap();
    let failed = sqlx::raw_sql("BEGIN; SET LOCAL awooop.project_id = 'alpha'; SELECT 1/0")
        .execute(&mut *conn)
        .await;
    assert!(failed.is_err());
    drop(conn);
    assert_eq!(left_behind(&db, &pool, &mut su).await, (None, false, 0));
    pool.close().await;
    drop(su);
    db.cleanup().await;
}

/// The next signal of `sub` that is not `Lost` (a reconnection says `Lost` first).
async fn next_signal(sub: &mut Subscription) -> Signal {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Some(Signal::Lost)) => continue,
            Ok(Some(s)) => return s,
            Ok(None) => panic!("the listener ended"),
            Err(_) => panic!("no signal within 10 s"),
        }
    }
}

/// The sessions of this database whose last statement was a LISTEN, with that statement.
async fn listen_sessions(t: &TestDb) -> Vec<(i32, String)> {
    sqlx::query_as(
        "SELECT pid, query FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&t.name)
    .fetch_all(&mut t.superuser().await)
    .await
    .unwrap()
}

/// A process's wake-up channels share one LISTEN connection (issue 18, session 31): a worker
/// process listened on three connections of its own (its claim loop, its delivery loop, its
/// gateway's cache), and PostgreSQL 15 signals every listening backend at every notifying
/// commit, whatever the channel, so with one worker pod per tenant each run created anywhere
/// woke three backends per idle pod, and each pod held three pool connections for it. Each
/// subscriber still hears only its own channel, and every loss and return of the connection.
#[tokio::test]
async fn a_process_listens_on_one_connection_for_every_wakeup_channel() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let db = cp.db().clone();
    let mut runs = db.listener().subscribe(notify::RUNS_CHANNEL);
    let mut out = db.listener().subscribe(notify::OUTBOUND_CHANNEL);
    assert_eq!(next_signal(&mut runs).await, Signal::Listening);
    assert_eq!(next_signal(&mut out).await, Signal::Listening);
    let first = listen_sessions(&t).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // A channel subscribed later: the others hear the gap and the return.
    let mut act = db.listener().subscribe(awooop::control::ACTIVATION_CHANNEL);
    assert_eq!(next_signal(&mut act).await, Signal::Listening);
    for s in [&mut runs, &mut out] {
        assert_eq!(next_signal(s).await, Signal::Listening);
    }
    let sessions = listen_sessions(&t).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    for channel in ["awooop_runs", "awooop_outbound", "awooop_activation"] {
        assert!(sessions[0].1.contains(channel), "{sessions:?}");
    }
    // The listener's own one-connection pool gave it the same server session back; from the
    // process's pool it took a new one at each new channel, and left the old ones there.
    assert_eq!(sessions[0].0, first[0].0, "a new session for a new channel");
    // Each subscriber hears its own channel's notices.
    let mut su = t.superuser().await;
    sqlx::query(
        "SELECT pg_notify('awooop_outbound', 'beta'), pg_notify('awooop_runs', 'alpha'), \
                pg_notify('awooop_activation', '{}')",
    )
    .execute(&mut su)
    .await
    .unwrap();
    assert_eq!(next_signal(&mut runs).await, Signal::Notice("alpha".into()));
    assert_eq!(next_signal(&mut out).await, Signal::Notice("beta".into()));
    assert_eq!(next_signal(&mut act).await, Signal::Notice("{}".into()));
    // The connection ends: every subscriber hears it, then the return.
    t.terminate_backend(sessions[0].0).await;
    for s in [&mut runs, &mut out, &mut act] {
        let lost = tokio::time::timeout(Duration::from_secs(10), s.recv()).await;
        assert_eq!(lost.unwrap(), Some(Signal::Lost));
        assert_eq!(next_signal(s).await, Signal::Listening);
    }
    sqlx::query("SELECT pg_notify('awooop_runs', 'gamma')")
        .execute(&mut su)
        .await
        .unwrap();
    assert_eq!(next_signal(&mut runs).await, Signal::Notice("gamma".into()));
    drop((runs, out, act));

    // The components of a worker process on one database handle: still one session.
    let exec = Arc::new(ScriptedExecutor::new(GuardedGateway::new(
        cp.clone(),
        Arc::new(NoGateway),
    )));
    let mut cfg = WorkerConfig::new("w");
    cfg.project = Some("alpha".into());
    let w = Arc::new(Worker::new(t.app.clone(), cp.clone(), exec, cfg));
    let (stop, rx) = shutdown_channel();
    let h = tokio::spawn(w.clone().run(rx));
    let follow = awooop::control::invalidation::follow(cp.db(), |_| true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = listen_sessions(&t).await;
        assert!(sessions.len() <= 1, "{sessions:?}");
        if sessions.len() == 1
            && w.stats
                .claim_rounds
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 2
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sessions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    h.await.unwrap().unwrap();
    follow.abort();
    t.cleanup().await;
}

/// A pool hands out the connection released last, so the connections a burst opened and the
/// load no longer needs go idle and are closed (issue 18, session 31; the patched sqlx-core,
/// operator/vendor/README.md). sqlx's pool handed its idle connections out in turn: none ever
/// sat idle long enough for its idle timeout, so a worker pod kept every connection it had
/// ever opened, and each was used cold (its statements prepared and planned once per session,
/// and pinged when idle a second).
#[tokio::test]
async fn a_pool_reuses_its_last_connection_and_closes_the_ones_a_burst_left() {
    let t = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .idle_timeout(Duration::from_secs(1))
        .connect(&t.url)
        .await
        .unwrap();
    // A burst: four connections at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    assert_eq!(pool.size(), 4);
    // Then one caller at a time, for longer than the idle timeout and the reaper's period.
    let mut pids = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        pids.insert(pid);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pids.len(), 1, "one caller at a time used {pids:?}");
    assert_eq!(
        pool.size(),
        1,
        "connections the burst opened and nobody used were kept"
    );
    pool.close().await;
    t.cleanup().await;
}
