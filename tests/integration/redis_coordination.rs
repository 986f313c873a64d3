//! Redis coordinates approvals but PostgreSQL decides: the lifecycle is correct with Redis,
//! without it, and across a Redis restart that loses every key. Where Redis is configured and
//! up, each test also proves Redis took part (the approval markers it wrote and removed);
//! where it is down, that the result is the same on PostgreSQL alone.

use awooop::auth::Actor;
use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::tenancy;

use crate::support::*;

/// `redis`: the URL of the Redis behind `coord` when it is up, to check its keys.
async fn lifecycle(coord: Coord, redis: Option<&str>) {
    let t = TestDb::new().await;
    let cp = t.control(coord);
    let p = project(&cp, "alpha", 2).await;
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        let marker = |who: &str| format!("awooop:alpha:approval:{r}:{who}");
        cp.approve(&Actor::cli("alice"), r).await.unwrap();
        if let Some(url) = redis {
            // Redis took part: alice's approval left its marker, expiring with the approval.
            assert_eq!(redis_keys(url, &marker("alice")).await, [marker("alice")]);
            let ttl = redis_ttl(url, &marker("alice")).await;
            assert!(ttl > 0, "the marker expires: {ttl}");
        }
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        assert_code(cp.activate(&admin(), r).await, "E-CONTRACT-012");
        cp.approve(&Actor::cli("bob"), r).await.unwrap();
        if let Some(url) = redis {
            assert_eq!(redis_keys(url, &marker("bob")).await, [marker("bob")]);
        }
        let a = cp.activate(&admin(), r).await.unwrap();
        assert_eq!(a.approvers.len(), 2);
        if let Some(url) = redis {
            // Activation consumed the approvals and removed their markers.
            assert!(redis_keys(url, &marker("*")).await.is_empty());
        }
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
    let coord = Coord::connect(&redis_url()).unwrap();
    assert_eq!(
        coord.ping().await,
        Some(true),
        "Redis answers on {}",
        redis_url()
    );
    lifecycle(coord, Some(&redis_url())).await;
}

#[tokio::test]
async fn lifecycle_without_redis() {
    lifecycle(Coord::none(), None).await;
}

#[tokio::test]
async fn lifecycle_with_redis_configured_but_down() {
    // Nothing listens on this port: every Redis call fails fast and PostgreSQL decides alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coord = Coord::connect(&format!("redis://127.0.0.1:{port}")).unwrap();
    assert_eq!(coord.ping().await, Some(false), "Redis is really down");
    lifecycle(coord, None).await;
}

#[tokio::test]
async fn redis_restart_neither_loses_nor_double_counts_approvals() {
    let mut redis = PrivateRedis::start();
    let t = TestDb::new().await;
    let coord = Coord::connect(&redis.url()).unwrap();
    let cp = t.control(coord.clone());
    let p = project(&cp, "alpha", 3).await;
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        let markers = format!("awooop:alpha:approval:{r}:*");
        cp.approve(&Actor::cli("alice"), r).await.unwrap();
        assert_eq!(
            redis_keys(&redis.url(), &markers).await,
            [format!("awooop:alpha:approval:{r}:alice")],
            "Redis took part"
        );
        // Redis dies: approvals continue on PostgreSQL alone.
        redis.stop();
        cp.approve(&Actor::cli("bob"), r).await.unwrap();
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        // Redis comes back empty: alice's marker is gone, yet she is still counted once.
        redis.restart();
        wait_for_redis(&coord).await;
        assert!(redis_keys(&redis.url(), &markers).await.is_empty());
        assert_code(cp.approve(&Actor::cli("alice"), r).await, "E-CONTRACT-011");
        // Redis answered (the marker is back), yet PostgreSQL refused the duplicate.
        assert_eq!(
            redis_keys(&redis.url(), &markers).await,
            [format!("awooop:alpha:approval:{r}:alice")]
        );
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
