//! Redis coordinates approvals but PostgreSQL decides: the lifecycle is correct with Redis,
//! without it, and across a Redis restart that loses every key.

use awooop::auth::Actor;
use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::tenancy;

use crate::support::*;

async fn lifecycle(coord: Coord) {
    let t = TestDb::new().await;
    let cp = t.control(coord);
    let p = project(&cp, "alpha", 2).await;
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        cp.approve(&Actor::cli("alice"), r).await.unwrap();
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        assert_code(cp.activate(&admin(), r).await, "E-CONTRACT-012");
        cp.approve(&Actor::cli("bob"), r).await.unwrap();
        let a = cp.activate(&admin(), r).await.unwrap();
        assert_eq!(a.approvers.len(), 2);
        assert_eq!(
            cp.active(ContractKind::Runtime, "default")
                .await
                .unwrap()
                .pointer
                .revision_id,
            r
        );
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn lifecycle_with_shared_redis() {
    lifecycle(Coord::connect(&redis_url()).unwrap()).await;
}

#[tokio::test]
async fn lifecycle_without_redis() {
    lifecycle(Coord::none()).await;
}

#[tokio::test]
async fn lifecycle_with_redis_configured_but_down() {
    // Nothing listens on this port: every Redis call fails fast and PostgreSQL decides alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    lifecycle(Coord::connect(&format!("redis://127.0.0.1:{port}")).unwrap()).await;
}

#[tokio::test]
async fn redis_restart_neither_loses_nor_double_counts_approvals() {
    let mut redis = PrivateRedis::start();
    let t = TestDb::new().await;
    let cp = t.control(Coord::connect(&redis.url()).unwrap());
    let p = project(&cp, "alpha", 3).await;
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        cp.approve(&Actor::cli("alice"), r).await.unwrap();
        // Redis dies: approvals continue on PostgreSQL alone.
        redis.stop();
        cp.approve(&Actor::cli("bob"), r).await.unwrap();
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        // Redis comes back empty: alice's marker is gone, yet she is still counted once.
        redis.restart();
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        assert_code(cp.approve(&Actor::cli("bob"), r).await, "E-CONTRACT-011");
        assert_code(cp.activate(&admin(), r).await, "E-CONTRACT-012");
        let s = cp.approve(&Actor::cli("carol"), r).await.unwrap();
        assert_eq!(s.approvals, 3);
        let a = cp.activate(&admin(), r).await.unwrap();
        assert_eq!(a.approvers, vec!["alice", "bob", "carol"]);
    })
    .await;
    t.cleanup().await;
}
