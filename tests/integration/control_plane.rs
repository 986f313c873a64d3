//! The contract lifecycle against a real PostgreSQL: immutability, draft isolation, signatures,
//! approvals, activation, rollback, NOTIFY and migration modes.

use awooop::auth::Actor;
use awooop::contracts::{ContractKind, signing};
use awooop::control::{MigrationMode, PublishRequest};
use awooop::coord::Coord;
use awooop::tenancy;
use serde_json::json;
use sqlx::Row;

use crate::support::*;

#[tokio::test]
async fn published_revision_is_immutable_for_runtime_role_and_owner() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let rev = tenancy::scope(
        p.clone(),
        publish(&cp, ContractKind::Runtime, "default", runtime_body(10)),
    )
    .await;

    for (who, pool) in [("runtime role", &t.app), ("owner", &t.owner)] {
        for sql in [
            "UPDATE contract_revisions SET body_canonical = '{}' WHERE revision_id = $1",
            "UPDATE contract_revisions SET published_by = 'mallory' WHERE revision_id = $1",
            "DELETE FROM contract_revisions WHERE revision_id = $1",
            "DELETE FROM publish_signatures WHERE revision_id = $1",
        ] {
            let mut tx = scoped_tx(pool, "alpha").await;
            let err = sqlx::query(sql)
                .bind(rev)
                .execute(&mut *tx)
                .await
                .expect_err(&format!("{who}: {sql} must fail"));
            let code = err
                .as_database_error()
                .and_then(|d| d.code())
                .unwrap()
                .to_string();
            // The runtime role lacks the privilege (42501); the owner hits the trigger (AW001).
            assert!(code == "AW001" || code == "42501", "{who}: {sql}: {code}");
            if who == "owner" {
                assert_eq!(code, "AW001", "{who}: {sql}");
            }
        }
        let err = sqlx::query("TRUNCATE contract_revisions CASCADE")
            .execute(pool)
            .await
            .expect_err("truncate must fail");
        let code = err
            .as_database_error()
            .and_then(|d| d.code())
            .unwrap()
            .to_string();
        assert!(
            code == "AW001" || code == "42501",
            "{who}: truncate: {code}"
        );
    }
    // Still there, unchanged.
    let row = tenancy::scope(p.clone(), cp.revision(ContractKind::Runtime, "default", 1))
        .await
        .unwrap();
    assert_eq!(row.revision_id, rev);
    assert_eq!(row.body, runtime_body(10));
    assert_eq!(row.published_by, "admin");
    t.cleanup().await;
}

#[tokio::test]
async fn database_rejects_a_body_that_does_not_match_its_hash() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    project(&cp, "alpha", 1).await;
    let mut tx = scoped_tx(&t.app, "alpha").await;
    let err = sqlx::query(
        "INSERT INTO contract_revisions (project_id, revision_id, kind, name, revision, body_canonical, body_hash, published_by) \
         VALUES ('alpha', gen_random_uuid(), 'runtime', 'x', 1, '{\"a\":1}', $1, 'me')",
    )
    .bind(format!("sha256:{}", "0".repeat(64)))
    .execute(&mut *tx)
    .await
    .expect_err("hash mismatch must be rejected by a CHECK constraint");
    assert_eq!(err.as_database_error().unwrap().code().unwrap(), "23514");
    tx.rollback().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn drafts_are_invisible_to_runtime_reads() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 2).await;
    tenancy::scope(p, async {
        let d = cp
            .create_draft(&admin(), ContractKind::Agent, "triage", agent_body())
            .await
            .unwrap();
        assert_code(
            cp.active(ContractKind::Agent, "triage").await,
            "E-CONTRACT-004",
        );
        // A published but not yet activated revision is not active either.
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        let rev = cp.publish(&admin(), d.draft.draft_id, req).await.unwrap();
        assert_code(
            cp.active(ContractKind::Agent, "triage").await,
            "E-CONTRACT-004",
        );
        approve_and_activate(&cp, rev.revision_id, 2).await;
        let active = cp.active(ContractKind::Agent, "triage").await.unwrap();
        assert_eq!(active.pointer.revision_id, rev.revision_id);
        // A newer draft with different content changes nothing the runtime sees.
        let mut changed = agent_body();
        changed["display_name"] = json!("Changed in a draft");
        cp.create_draft(&admin(), ContractKind::Agent, "triage", changed)
            .await
            .unwrap();
        let again = cp.active(ContractKind::Agent, "triage").await.unwrap();
        assert_eq!(again.body["display_name"], "Triage");
        assert_eq!(again.pointer.body_hash, rev.body_hash);
        assert_eq!(
            again.pointer.body_hash,
            awooop::contracts::canonical::body_hash(&agent_body())
        );
    })
    .await;
    // Every active revision has a revision_id and a body_hash matching its revision row. The
    // owner is subject to FORCE RLS too, so it looks from inside the tenant's scope.
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    let rows = sqlx::query(
        "SELECT a.revision_id, a.body_hash, r.body_hash AS rev_hash FROM active_revisions a \
         LEFT JOIN contract_revisions r USING (project_id, revision_id)",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].get("body_hash");
    let rev_hash: Option<String> = rows[0].get("rev_hash");
    assert!(awooop::contracts::canonical::is_sha256_ref(&hash));
    assert_eq!(rev_hash.as_deref(), Some(hash.as_str()));
    tx.rollback().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn signatures_tampered_replayed_stale_or_unknown_key_are_rejected_and_nothing_is_written() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    tenancy::scope(p, async {
        let d = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", runtime_body(1))
            .await
            .unwrap();
        let id = d.draft.draft_id;
        let good = cp.sign_draft(id, KEY_ID).await.unwrap();

        // Tampered: flip one hex digit.
        let mut bad = good.clone();
        let first = if bad.signature.starts_with('0') {
            "1"
        } else {
            "0"
        };
        bad.signature.replace_range(0..1, first);
        assert_code(cp.publish(&admin(), id, bad).await, "E-CONTRACT-008");
        // Signed by another key material under the same id.
        let forged = PublishRequest {
            signature: signing::sign(&[0x13; 32], &d.signing_message),
            ..good.clone()
        };
        assert_code(cp.publish(&admin(), id, forged).await, "E-CONTRACT-008");
        // Not hex / wrong length.
        assert_code(
            cp.publish(
                &admin(),
                id,
                PublishRequest {
                    signature: "zz".into(),
                    ..good.clone()
                },
            )
            .await,
            "E-CONTRACT-008",
        );
        // Unknown key id.
        assert_code(
            cp.publish(
                &admin(),
                id,
                PublishRequest {
                    key_id: "nope".into(),
                    ..good.clone()
                },
            )
            .await,
            "E-CONTRACT-010",
        );
        // Stale revision number.
        assert_code(
            cp.publish(
                &admin(),
                id,
                PublishRequest {
                    revision: 2,
                    ..good.clone()
                },
            )
            .await,
            "E-CONTRACT-005",
        );
        // Body hash the signer saw differs from the draft.
        assert_code(
            cp.publish(
                &admin(),
                id,
                PublishRequest {
                    body_hash: Some(format!("sha256:{}", "1".repeat(64))),
                    ..good.clone()
                },
            )
            .await,
            "E-CONTRACT-005",
        );
        // Nothing was written by any of those.
        assert_code(
            cp.history(ContractKind::Runtime, "default").await,
            "E-CONTRACT-004",
        );
        assert!(cp.get_draft(id).await.is_ok());

        let rev = cp.publish(&admin(), id, good.clone()).await.unwrap();
        assert_eq!(rev.revision, 1);

        // Replay of the same signature for a new draft of the same content.
        let d2 = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", runtime_body(1))
            .await
            .unwrap();
        assert_code(
            cp.publish(
                &admin(),
                d2.draft.draft_id,
                PublishRequest {
                    revision: 2,
                    ..good.clone()
                },
            )
            .await,
            "E-CONTRACT-009",
        );
        assert_code(
            cp.publish(&admin(), d2.draft.draft_id, good).await,
            "E-CONTRACT-009",
        );
        let h = cp.history(ContractKind::Runtime, "default").await.unwrap();
        assert_eq!(h.revisions.len(), 1);

        // Denials were audited, without signature material.
        let audit = cp.audit(100).await.unwrap();
        let denied: Vec<_> = audit.iter().filter(|a| a.outcome == "denied").collect();
        assert!(
            denied
                .iter()
                .any(|a| a.code.as_deref() == Some("E-CONTRACT-008"))
        );
        assert!(
            denied
                .iter()
                .any(|a| a.code.as_deref() == Some("E-CONTRACT-009"))
        );
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn keyring_material_must_match_the_registered_fingerprint() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    tenancy::scope(p, async {
        let d = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", runtime_body(1))
            .await
            .unwrap();
        // Swap the server's keyring entry for other material with the same id.
        let mut ring = test_keyring();
        ring.insert(KEY_ID, vec![0x99; 32]);
        cp.set_keyring(ring);
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        assert_code(
            cp.publish(&admin(), d.draft.draft_id, req).await,
            "E-CONTRACT-010",
        );
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn approvals_count_distinct_approvers_and_activation_needs_enough() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 2).await;
    tenancy::scope(p, async {
        let d = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", runtime_body(1))
            .await
            .unwrap();
        // A draft cannot be approved or activated.
        assert_code(
            cp.approve(&Actor::cli("alice"), d.draft.draft_id).await,
            "E-CONTRACT-006",
        );
        assert_code(
            cp.activate(&admin(), d.draft.draft_id).await,
            "E-CONTRACT-006",
        );
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        let rev = cp
            .publish(&admin(), d.draft.draft_id, req)
            .await
            .unwrap()
            .revision_id;

        let s = cp.approve(&Actor::cli("alice"), rev).await.unwrap();
        assert_eq!((s.approvals, s.required), (1, 2));
        assert_code(
            cp.approve(&Actor::cli("alice"), rev).await,
            "E-CONTRACT-011",
        );
        assert_code(cp.activate(&admin(), rev).await, "E-CONTRACT-012");

        // Ten concurrent approvals by the same approver: none is counted again.
        let results = futures::future::join_all((0..10).map(|_| {
            tenancy::scope(pid("alpha"), async {
                cp.approve(&Actor::cli("bob"), rev).await
            })
        }))
        .await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| e.code.as_str() == "E-CONTRACT-011")
        );

        let a = cp.activate(&admin(), rev).await.unwrap();
        assert_eq!(a.approvers, vec!["alice".to_string(), "bob".to_string()]);
        assert_code(cp.activate(&admin(), rev).await, "E-CONTRACT-015");
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn expired_approvals_do_not_count_and_can_be_renewed() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 2).await;
    let rev = tenancy::scope(
        p.clone(),
        publish(&cp, ContractKind::Runtime, "default", runtime_body(1)),
    )
    .await;
    tenancy::scope(p.clone(), async {
        cp.approve(&Actor::cli("alice"), rev).await.unwrap();
        cp.approve(&Actor::cli("bob"), rev).await.unwrap();
    })
    .await;
    // Age alice's approval past its TTL (as the owner, in the tenant's scope).
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    sqlx::query("UPDATE activation_approvals SET approved_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE approver = 'alice'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tenancy::scope(p, async {
        assert_code(cp.activate(&admin(), rev).await, "E-CONTRACT-012");
        // alice may approve again; now there are two valid approvals.
        let s = cp.approve(&Actor::cli("alice"), rev).await.unwrap();
        assert_eq!(s.approvals, 2);
        cp.activate(&admin(), rev).await.unwrap();
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn concurrent_activations_leave_exactly_one_active_pointer() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let revs = tenancy::scope(p.clone(), async {
        let mut revs = Vec::new();
        for i in 0..6 {
            let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(100 + i)).await;
            cp.approve(&Actor::cli("alice"), r).await.unwrap();
            revs.push(r);
        }
        revs
    })
    .await;
    // All six revisions race to become active, twice each.
    let tasks = revs.iter().chain(revs.iter()).map(|r| {
        let cp = cp.clone();
        let r = *r;
        tenancy::spawn(tenancy::scope(pid("alpha"), async move {
            cp.activate(&admin(), r).await
        }))
    });
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // Each revision's approval is consumed by its activation, so at most one activation per
    // revision succeeds; the rest fail with a stable code.
    assert!((1..=6).contains(&ok), "{ok}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            ["E-CONTRACT-012", "E-CONTRACT-015"].contains(&r.code.as_str()),
            "{r}"
        );
    }
    let mut tx = scoped_tx(&t.owner, "alpha").await;
    let pointers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM active_revisions WHERE kind = 'runtime' AND name = 'default'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(pointers, 1);
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM activation_history")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(history as usize, ok);
    // The pointer is the last activation in history, and history chains previous pointers.
    let last: uuid::Uuid = sqlx::query_scalar("SELECT revision_id FROM activation_history ORDER BY activated_at DESC, activation_id DESC LIMIT 1")
        .fetch_one(&mut *tx).await.unwrap();
    let active: uuid::Uuid = sqlx::query_scalar("SELECT revision_id FROM active_revisions")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(last, active);
    let broken_chain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT previous_revision_id, lag(revision_id) OVER (ORDER BY activated_at, activation_id) AS prev FROM activation_history) h \
         WHERE h.previous_revision_id IS DISTINCT FROM h.prev",
    )
    .fetch_one(&mut *tx).await.unwrap();
    assert_eq!(broken_chain, 0);
    tx.rollback().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn rollback_activates_an_earlier_revision_and_notify_fires() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let mut listener = sqlx::postgres::PgListener::connect(&t.url).await.unwrap();
    listener
        .listen(awooop::control::ACTIVATION_CHANNEL)
        .await
        .unwrap();
    tenancy::scope(p, async {
        let r1 = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        approve_and_activate(&cp, r1, 1).await;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        assert_eq!(payload["project_id"], "alpha");
        assert_eq!(payload["revision_id"], r1.to_string());

        let r2 = publish(&cp, ContractKind::Runtime, "default", runtime_body(2)).await;
        approve_and_activate(&cp, r2, 1).await;
        // Rollback: r1 again, with a fresh approval.
        cp.approve(&Actor::cli("approver0"), r1).await.unwrap();
        let a = cp.activate(&admin(), r1).await.unwrap();
        assert!(a.is_rollback);
        assert_eq!(a.previous_revision_id, Some(r2));
        let h = cp.history(ContractKind::Runtime, "default").await.unwrap();
        assert_eq!(h.active_revision_id, Some(r1));
        assert_eq!(h.revisions.len(), 2);
        assert_eq!(h.activations.len(), 3);
        assert_eq!(
            cp.active(ContractKind::Runtime, "default")
                .await
                .unwrap()
                .body,
            runtime_body(1)
        );
        let diff = cp
            .diff(ContractKind::Runtime, "default", 1, 2)
            .await
            .unwrap();
        assert!(
            diff.contains("-  \"max_concurrent_runs\": 1,")
                && diff.contains("+  \"max_concurrent_runs\": 2,"),
            "{diff}"
        );
    })
    .await;
    for _ in 0..2 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(n.payload().contains("\"project_id\":\"alpha\""));
    }
    t.cleanup().await;
}

#[tokio::test]
async fn project_contract_activation_sets_approval_policy_and_acl() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let body = json!({
        "display_name": "Alpha",
        "data_boundary": {"default_class": "internal", "allowed_classes": ["public", "internal"]},
        "budget": {"period": "month", "token_limit": 1000000},
        "acl": {"approvers": ["carol", "dave", "erin"]},
        "approval": {"required_approvals": 3, "ttl_seconds": 3600},
        "environments": ["dev", "prod"],
        "workers": {"min_replicas": 0, "max_replicas": 3, "runs_per_replica": 20}
    });
    tenancy::scope(p, async {
        let r = publish(&cp, ContractKind::Project, "alpha", body).await;
        approve_and_activate(&cp, r, 1).await;
        let proj = cp.project().await.unwrap();
        assert_eq!(proj.project.required_approvals, 3);
        assert_eq!(proj.project.approval_ttl_seconds, 3600);
        // Now only ACL-listed approvers may approve.
        let r2 = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        assert_code(
            cp.approve(
                &Actor {
                    principal: "mallory".into(),
                    roles: vec![awooop::auth::Role::Approver],
                    admin: false,
                },
                r2,
            )
            .await,
            "E-CONTRACT-014",
        );
        for who in ["carol", "dave"] {
            cp.approve(&Actor::cli(who), r2).await.unwrap();
        }
        assert_code(cp.activate(&admin(), r2).await, "E-CONTRACT-012");
        cp.approve(&Actor::cli("erin"), r2).await.unwrap();
        cp.activate(&admin(), r2).await.unwrap();
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn roles_are_enforced() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let reader = Actor {
        principal: "rita".into(),
        roles: vec![awooop::auth::Role::Reader],
        admin: false,
    };
    tenancy::scope(p, async {
        assert_code(
            cp.create_draft(&reader, ContractKind::Runtime, "default", runtime_body(1))
                .await,
            "E-AUTH-003",
        );
        let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
        assert_code(cp.approve(&reader, r).await, "E-AUTH-003");
        assert_code(cp.activate(&reader, r).await, "E-AUTH-003");
        assert_code(
            cp.set_mode(&reader, MigrationMode::Canary, false, None)
                .await,
            "E-AUTH-003",
        );
        assert_code(cp.list_projects(&reader).await, "E-AUTH-003");
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn migration_mode_moves_one_step_unless_forced_with_reason() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    // The seeded first tenant starts in shadow mode.
    let awoooi = pid("awoooi");
    let v = tenancy::scope(awoooi, cp.migration()).await.unwrap();
    assert_eq!(v.mode, "shadow");
    let p = project(&cp, "alpha", 1).await;
    tenancy::scope(p, async {
        assert_code(
            cp.set_mode(&admin(), MigrationMode::ReadOnly, false, None)
                .await,
            "E-MIGRATION-001",
        );
        assert_code(
            cp.set_mode(&admin(), MigrationMode::ReadOnly, true, None)
                .await,
            "E-MIGRATION-002",
        );
        cp.set_mode(&admin(), MigrationMode::Canary, false, None)
            .await
            .unwrap();
        let v = cp
            .set_mode(
                &admin(),
                MigrationMode::AutoRemediate,
                true,
                Some("pilot approved in CAB-7"),
            )
            .await
            .unwrap();
        assert_eq!(v.mode, "auto_remediate");
        assert_eq!(v.history.len(), 3);
        let last = v.history.last().unwrap();
        assert!(last.forced);
        assert_eq!(last.reason.as_deref(), Some("pilot approved in CAB-7"));
        assert_eq!(last.from_mode.as_deref(), Some("canary"));
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn invalid_contracts_and_bad_names_write_nothing() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "alpha", 1).await;
    tenancy::scope(p, async {
        let mut body = runtime_body(1);
        body["surprise"] = json!(true);
        let e = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", body)
            .await
            .unwrap_err();
        assert_eq!(e.code.as_str(), "E-SCHEMA-001");
        let v = &e.details.unwrap()["violations"][0];
        assert_eq!(v["path"], "");
        assert!(v["message"].as_str().unwrap().contains("surprise"));
        assert_code(
            cp.create_draft(&admin(), ContractKind::Runtime, "Bad Name", runtime_body(1))
                .await,
            "E-REQ-003",
        );
        let mut body = runtime_body(1);
        body["heartbeat_seconds"] = json!(60);
        assert_code(
            cp.create_draft(&admin(), ContractKind::Runtime, "default", body)
                .await,
            "E-CONTRACT-003",
        );
        assert!(cp.list_drafts().await.unwrap().is_empty());
        // Artifacts must be registered with the exact hash before a contract referencing them
        // can be published.
        let prompt = b"You are a careful SRE.";
        let a = cp
            .put_artifact(&admin(), "prompts/triage", "prompt", "text/plain", prompt)
            .await
            .unwrap();
        let mut agent = agent_body();
        agent["prompt"] =
            json!({"ref": "prompts/triage", "sha256": format!("sha256:{}", "0".repeat(64))});
        let d = cp
            .create_draft(&admin(), ContractKind::Agent, "triage", agent.clone())
            .await
            .unwrap();
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        assert_code(
            cp.publish(&admin(), d.draft.draft_id, req).await,
            "E-CONTRACT-013",
        );
        agent["prompt"]["sha256"] = json!(a.sha256);
        let d = cp
            .create_draft(&admin(), ContractKind::Agent, "triage", agent)
            .await
            .unwrap();
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        cp.publish(&admin(), d.draft.draft_id, req).await.unwrap();
        assert_eq!(
            cp.artifact("prompts/triage", &a.sha256).await.unwrap(),
            prompt
        );
    })
    .await;
    t.cleanup().await;
}

/// A refused approval whose caller hangs up while the refusal is being audited (the HTTP
/// handler dropped) still leaves its denial row. Before the fix the denial row was written in
/// the caller's future, so dropping it there lost the only trace of the refused attempt
/// (here: zero `revision.approve` denials). The test locks `audit_log` against inserts,
/// drops the refused approval while its audit insert waits, then releases the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_approval_dropped_while_audited_still_leaves_its_denial() {
    let t = TestDb::new().await;
    let cp = t.control(Coord::none());
    let p = project(&cp, "refusal-dropped", 2).await;
    let rev = tenancy::scope(p.clone(), async {
        let d = cp
            .create_draft(&admin(), ContractKind::Runtime, "default", runtime_body(1))
            .await
            .unwrap();
        let req = cp.sign_draft(d.draft.draft_id, KEY_ID).await.unwrap();
        let rev = cp
            .publish(&admin(), d.draft.draft_id, req)
            .await
            .unwrap()
            .revision_id;
        cp.approve(&Actor::cli("alice"), rev).await.unwrap();
        rev
    })
    .await;
    // Alice again: refused (E-CONTRACT-011), and the refusal is audited.
    let cp2 = cp.clone();
    t.drop_while_blocked(
        "LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE",
        "INSERT INTO audit_log",
        tenancy::scope(p.clone(), async move {
            cp2.approve(&Actor::cli("alice"), rev).await
        }),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut tx = scoped_tx(&t.app, "refusal-dropped").await;
        let codes: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT code FROM audit_log WHERE action = 'revision.approve' AND outcome = 'denied'",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if !codes.is_empty() {
            assert_eq!(codes, [Some("E-CONTRACT-011".to_string())]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped refusal left no denial row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    t.cleanup().await;
}
