//! The embedded default of `awooop up`: a private throwaway cluster from the installed
//! PostgreSQL binaries (initdb into a state folder, a free port), migrated and seeded.

use awooop::tenancy;

#[tokio::test]
async fn private_cluster_starts_migrates_and_seeds_awoooi() {
    if awooop::local::find_pg_bindir().is_none() {
        panic!("PostgreSQL server binaries are not installed (scripts/test.sh installs them)");
    }
    let dir = std::env::temp_dir().join(format!("awooop-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = awooop::local::start_private_cluster(&dir).expect("private cluster");
    assert!(pg.url.starts_with("postgres://postgres@127.0.0.1:"));
    let url = awooop::db::ensure_database(&pg.url, "awooop")
        .await
        .unwrap();
    awooop::db::migrate(&url).await.unwrap();
    // Idempotent.
    awooop::db::migrate(&url).await.unwrap();
    let pool = awooop::db::connect_app(&url, 2).await.unwrap();
    let cp = awooop::control::ControlPlane::new(
        tenancy::Db::new(pool.clone()),
        awooop::coord::Coord::none(),
        Default::default(),
    );
    let v = tenancy::scope(tenancy::ProjectId::parse("awoooi").unwrap(), cp.migration())
        .await
        .unwrap();
    assert_eq!(v.mode, "shadow");
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
