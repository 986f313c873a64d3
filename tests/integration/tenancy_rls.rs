//! Tenant isolation, checked table by table. The tables are discovered from
//! information_schema, so a new tenant table is covered without editing this test.

use awooop::contracts::ContractKind;
use awooop::coord::Coord;
use awooop::tenancy;
use sqlx::{PgPool, Row};

use crate::support::*;

/// Fill two projects with rows in every table the lifecycle and the runtime touch.
async fn two_populated_projects(t: &TestDb) {
    let cp = t.control(Coord::none());
    let echo = serde_json::json!({
        "display_name": "Echo", "context_domain": "demo",
        "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 60},
        "executor": {"type": "scripted", "steps": [{"type": "output", "key": "echo", "template": "hi"}]}
    });
    for id in ["tenant-a", "tenant-b"] {
        let p = project(&cp, id, 1).await;
        tenancy::scope(p.clone(), async {
            cp.put_artifact(&admin(), "prompts/x", "prompt", "text/plain", id.as_bytes())
                .await
                .unwrap();
            let r = publish(&cp, ContractKind::Runtime, "default", runtime_body(1)).await;
            approve_and_activate(&cp, r, 1).await;
            cp.create_draft(&admin(), ContractKind::Agent, "triage", agent_body())
                .await
                .unwrap();
            let r2 = publish(&cp, ContractKind::Runtime, "default", runtime_body(2)).await;
            cp.approve(&awooop::auth::Actor::cli("approver0"), r2)
                .await
                .unwrap();
            cp.set_mode(
                &admin(),
                awooop::control::MigrationMode::Canary,
                false,
                None,
            )
            .await
            .unwrap();
            let a = publish(&cp, ContractKind::Agent, "echo", echo.clone()).await;
            approve_and_activate(&cp, a, 1).await;
            // MCP gateway tables: the registry projection (on activation), approval uses and
            // the call audit.
            let g = publish(&cp, ContractKind::McpGateway, "default", serde_json::json!({
                "credential_refs": [{"name": "tok", "source": {"env": {"var": "TOK"}}}],
                "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:9/mcp"},
                               "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization", "prefix": ""}}]}],
                "tools": [{"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["dev"], "input_schema": {"type": "object"}}],
                "grants": [{"agent": "echo", "tools": ["k8s__get_pods"], "environments": ["dev"]}]
            })).await;
            approve_and_activate(&cp, g, 1).await;
            let mut tx = cp.db().tenant().await.unwrap();
            sqlx::query(
                "INSERT INTO mcp_approval_uses (project_id, jti, tool, approver, expires_at) \
                 VALUES ($1, 'jti-00000001', 'k8s__get_pods', 'alice', now() + interval '1 hour')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO mcp_call_audit (project_id, call_id, at, trace_id, agent, tool, environment, mode, \
                 decision, result_status, latency_us, bytes_in, bytes_out) \
                 VALUES ($1, gen_random_uuid(), now(), 't', 'echo', 'k8s__get_pods', 'dev', 'shadow', 'denied', 'denied', 0, 0, 0)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            let runs = awooop::runtime::RunService::new(cp.clone());
            let run = runs
                .create(
                    &awooop::auth::Actor::cli("r"),
                    awooop::runtime::CreateRun {
                        agent: "echo".into(),
                        input: serde_json::json!({}),
                        mode: None,
                        reply_to: None,
                    },
                    Some("idem-1"),
                    None,
                )
                .await
                .unwrap();
            // Claim it and journal a step, so the step journal has rows too.
            let claimed = awooop::runtime::repo::worker_claim(&t.app, "rls-test", 10, 30.0)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            let mut tx = cp.db().tenant().await.unwrap();
            let trace = awooop::runtime::TraceContext::generate();
            let step = awooop::runtime::repo::StepRecord {
                project: id,
                run_id: run.run_id,
                attempt: 1,
                step_index: 0,
                step_key: "echo",
                step_type: "output",
                input_hash: "h",
                status: "succeeded",
                output: None,
                error_code: None,
                trace: &trace,
                started_at: chrono::Utc::now(),
            };
            assert!(
                awooop::runtime::repo::journal_step(&mut tx, &step)
                    .await
                    .unwrap()
            );
            let reply = awooop::runtime::outbound::ReplyTo {
                channel: "api".into(),
                conversation: "c1".into(),
            };
            assert!(
                awooop::runtime::outbound::deliver_reply(
                    &mut tx,
                    id,
                    run.run_id,
                    &reply,
                    &awooop::model::validate::OutputSchema::none()
                        .validate(serde_json::json!({}))
                        .unwrap(),
                    &trace.trace_id
                )
                .await
                .unwrap()
            );
            // The channel hub's tables: a conversation event, a delivery attempt, a progress
            // row (of this canary run: shadow runs get none).
            for sql in [
                "INSERT INTO conversation_events (project_id, event_id, channel, provider, external_id, conversation, kind, body_sha256, trace_id, run_id) \
                 VALUES ($1, gen_random_uuid(), 'tg', 'telegram', 'u1', 'c1', 'message', repeat('a', 64), repeat('0', 32), $2)",
                "INSERT INTO channel_deliveries (project_id, delivery_id, message_id, channel, attempt, status) \
                 VALUES ($1, gen_random_uuid(), gen_random_uuid(), 'tg', 1, 'sent') RETURNING $2::uuid",
                "INSERT INTO channel_progress (project_id, run_id, channel, conversation, trace_id, interval_seconds, next_at) \
                 VALUES ($1, $2, 'tg', 'c1', 't', 30, now())",
                // Approvals: a request with a decision, and dry-run evidence.
                "INSERT INTO approval_requests (project_id, request_id, run_id, step_index, kind, agent, tool, arguments, \
                 args_sha256, preview, reason, required_approvals, approvers, trace_id, expires_at) \
                 VALUES ($1, '00000000-0000-7000-8000-000000000001', $2, 1, 'approval', 'echo', 'k8s__scale', '{}', \
                 'sha256:' || repeat('a', 64), '{}', 'rls fixture', 1, '{}', repeat('0', 32), now() + interval '1 hour')",
                "INSERT INTO approval_decisions (project_id, request_id, approver, decision, via, trace_id) \
                 VALUES ($1, '00000000-0000-7000-8000-000000000001', 'alice', 'approve', 'test', repeat('0', 32)) RETURNING $2::uuid",
                "INSERT INTO tool_evidence (project_id, run_id, tool, args_sha256, dry_run_tool, result_sha256, result) \
                 VALUES ($1, $2, 'k8s__scale', 'sha256:' || repeat('a', 64), 'k8s__plan', 'sha256:' || repeat('b', 64), '{}')",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .bind(run.run_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            // The model path's tables: budget ledger and reservation, a provider breaker, an
            // anomaly window (PostgreSQL fallback: no Redis here).
            use awooop::model::{breaker::*, budget::*, policy::*};
            let b = Budget::new(cp.db().clone());
            let limits = BudgetPolicy {
                period: awooop::contracts::BudgetPeriod::Day,
                project: ScopeLimit {
                    token_limit: 1000,
                    currency_limit_micros: None,
                },
                agent: None,
            };
            let req = ReserveRequest {
                run_id: None,
                agent: "echo".into(),
                provider: "p".into(),
                model: "m".into(),
                tokens: 10,
                micros: 0,
                ttl: std::time::Duration::from_secs(60),
            };
            let r = b.reserve(&limits, &req).await.unwrap();
            assert!(b.settle(&r, 5, 0).await.unwrap());
            // A budget lease (before the breaker below opens) (migration 0062): taken, used and given back by a leased budget.
            let leased = Budget::with_leases(cp.db().clone(), lease::LeaseConfig::default());
            let r = leased.reserve(&limits, &req).await.unwrap();
            assert!(leased.settle(&r, 5, 0).await.unwrap());
            leased.shutdown().await.unwrap();
            let cfg = BreakerPolicy {
                failure_threshold: 5,
                cooldown_seconds: 60,
            };
            Breakers::new(cp.db().clone())
                .provider_failure("p", "http://127.0.0.1:1", &cfg)
                .await
                .unwrap();
            Breakers::new(cp.db().clone())
                .open_project("rls fixture", std::time::Duration::from_secs(1))
                .await
                .unwrap();
            AnomalyCounter::new(cp.db().clone(), Coord::none(), AnomalyConfig::default())
                .record(Anomaly::Denial)
                .await
                .unwrap();
        })
        .await;
        cp.create_api_key(&admin(), &p, "ci", vec![awooop::auth::Role::Reader])
            .await
            .unwrap();
    }
}

async fn tenant_tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = 'public' AND c.column_name = 'project_id' AND t.table_type = 'BASE TABLE' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn insertable_columns(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1 AND is_generated = 'NEVER' ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_tenant_table_isolates_projects_and_fails_closed() {
    let t = TestDb::new().await;
    two_populated_projects(&t).await;
    let tables = tenant_tables(&t.owner).await;
    assert!(tables.len() >= 13, "{tables:?}");

    for table in &tables {
        let q = |sql: &str| sqlx::AssertSqlSafe(sql.replace("{t}", &format!("\"{table}\"")));
        // Rows of both tenants exist (checked per tenant, since even the owner is under RLS).
        for (me, other) in [("tenant-a", "tenant-b"), ("tenant-b", "tenant-a")] {
            let mut tx = t.app.begin().await.unwrap();
            sqlx::query("SELECT set_config('awooop.project_id', $1, true)")
                .bind(me)
                .execute(&mut *tx)
                .await
                .unwrap();
            let mine: i64 = sqlx::query_scalar(q("SELECT count(*) FROM {t} WHERE project_id = $1"))
                .bind(me)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert!(mine > 0, "{table}: the fixture must put rows of {me} here");
            let total: i64 = sqlx::query_scalar(q("SELECT count(*) FROM {t}"))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(total, mine, "{table}: {me} sees rows of another tenant");
            let theirs: i64 =
                sqlx::query_scalar(q("SELECT count(*) FROM {t} WHERE project_id = $1"))
                    .bind(other)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            assert_eq!(theirs, 0, "{table}: {me} reads {other}");
            // Writes into the other tenant: an UPDATE or DELETE finds nothing to change...
            let cols = insertable_columns(&t.owner, table).await;
            let first = cols.iter().find(|c| *c != "project_id").unwrap();
            let mut sp = sqlx::Acquire::begin(&mut *tx).await.unwrap();
            let upd = sqlx::query(q(&format!(
                "UPDATE {{t}} SET \"{first}\" = \"{first}\" WHERE project_id = $1"
            )))
            .bind(other)
            .execute(&mut *sp)
            .await;
            match upd {
                Ok(r) => assert_eq!(r.rows_affected(), 0, "{table}: {me} updated {other}'s rows"),
                // No UPDATE grant on this column (append-only table): also a refusal.
                Err(e) => assert_eq!(
                    e.as_database_error().unwrap().code().as_deref(),
                    Some("42501"),
                    "{table}"
                ),
            }
            sp.rollback().await.unwrap();
            // ...and an INSERT of a row labelled with the other tenant is rejected by RLS.
            let list = cols
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let select = cols
                .iter()
                .map(|c| {
                    if c == "project_id" {
                        "$1".to_string()
                    } else {
                        format!("\"{c}\"")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut sp = sqlx::Acquire::begin(&mut *tx).await.unwrap();
            let err = sqlx::query(q(&format!(
                "INSERT INTO {{t}} ({list}) SELECT {select} FROM {{t}} LIMIT 1"
            )))
            .bind(other)
            .execute(&mut *sp)
            .await
            .expect_err(&format!("{table}: {me} inserted a row for {other}"));
            let db = err.as_database_error().unwrap();
            assert_eq!(
                db.code().as_deref(),
                Some("42501"),
                "{table}: {}",
                db.message()
            );
            assert!(
                db.message().contains("row-level security"),
                "{table}: {}",
                db.message()
            );
            sp.rollback().await.unwrap();
            tx.rollback().await.unwrap();
        }

        // No tenant context: nothing visible, every write rejected.
        for pool in [&t.app, &t.owner] {
            let n: i64 = sqlx::query_scalar(q("SELECT count(*) FROM {t}"))
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(n, 0, "{table}: visible without tenant context");
        }
        let cols = insertable_columns(&t.owner, table).await;
        let list = cols
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut tx = t.app.begin().await.unwrap();
        // Read a real row inside tenant-a's scope, then try to write it back with no scope.
        sqlx::query("SELECT set_config('awooop.project_id', 'tenant-a', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let row = sqlx::query(q(&format!(
            "SELECT to_jsonb(x) AS j FROM (SELECT {list} FROM {{t}} LIMIT 1) x"
        )))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let j: serde_json::Value = row.get("j");
        sqlx::query("SELECT set_config('awooop.project_id', '', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query(q(&format!(
            "INSERT INTO {{t}} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{{t}}, $1)"
        )))
        .bind(&j)
        .execute(&mut *tx)
        .await
        .expect_err(&format!("{table}: write accepted without tenant context"));
        assert_eq!(
            err.as_database_error().unwrap().code().as_deref(),
            Some("42501"),
            "{table}"
        );
        tx.rollback().await.unwrap();
    }
    t.cleanup().await;
}

#[tokio::test]
async fn every_table_is_tenant_or_platform_with_forced_rls_and_least_privilege() {
    let t = TestDb::new().await;
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, c.relrowsecurity, c.relforcerowsecurity, \
         obj_description(c.oid, 'pg_class') AS comment, \
         EXISTS (SELECT 1 FROM information_schema.columns i WHERE i.table_schema = 'public' \
                 AND i.table_name = c.relname AND i.column_name = 'project_id') AS tenant, \
         pg_get_userbyid(c.relowner) AS owner \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'",
    )
    .fetch_all(&t.owner)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        let name: String = r.get("name");
        let tenant: bool = r.get("tenant");
        let comment: Option<String> = r.get("comment");
        assert!(
            tenant || comment.as_deref() == Some("awooop:platform"),
            "{name}: neither a tenant table (project_id) nor marked as a platform table"
        );
        assert!(
            r.get::<bool, _>("relrowsecurity"),
            "{name}: RLS not enabled"
        );
        assert!(
            r.get::<bool, _>("relforcerowsecurity"),
            "{name}: RLS not forced"
        );
        assert_ne!(
            r.get::<String, _>("owner"),
            "awooop_app",
            "{name}: owned by the runtime role"
        );
        if tenant {
            let nullable: String = sqlx::query_scalar(
                "SELECT is_nullable::text FROM information_schema.columns WHERE table_schema='public' AND table_name=$1 AND column_name='project_id'",
            )
            .bind(&name)
            .fetch_one(&t.owner)
            .await
            .unwrap();
            assert_eq!(nullable, "NO", "{name}.project_id must be NOT NULL");
        }
    }
    let bypass: bool = sqlx::query_scalar(
        "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = 'awooop_app'",
    )
    .fetch_one(&t.owner)
    .await
    .unwrap();
    assert!(!bypass, "awooop_app must not bypass RLS");
    // Append-only tables: the runtime role may not UPDATE or DELETE.
    for table in [
        "contract_revisions",
        "publish_signatures",
        "activation_history",
        "project_migration_history",
        "audit_log",
        "artifact_refs",
        "platform_audit",
    ] {
        for privilege in ["UPDATE", "DELETE", "TRUNCATE"] {
            let has: bool = sqlx::query_scalar("SELECT has_table_privilege('awooop_app', $1, $2)")
                .bind(table)
                .bind(privilege)
                .fetch_one(&t.owner)
                .await
                .unwrap();
            assert!(!has, "awooop_app has {privilege} on append-only {table}");
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn platform_tables_need_platform_scope_and_access_is_audited() {
    let t = TestDb::new().await;
    let db = t.db();
    // A tenant session sees no platform rows and cannot write them.
    let mut tx = db
        .platform(
            "ops",
            "provider_health.write",
            serde_json::json!({"provider": "ollama"}),
        )
        .await
        .unwrap();
    sqlx::query("INSERT INTO platform_resources (resource_kind, resource_key, value, updated_by) VALUES ('provider_health', 'ollama', '{\"ok\":true}', 'ops')")
        .execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = scoped_tx(&t.app, "awoooi").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM platform_resources")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let err = sqlx::query("INSERT INTO platform_resources (resource_kind, resource_key, value, updated_by) VALUES ('x', 'y', '{}', 'z')")
        .execute(&mut *tx).await.unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("42501")
    );
    tx.rollback().await.unwrap();
    // In platform scope the row is there, and the access left an audit row.
    let mut tx = db
        .platform("ops", "provider_health.read", serde_json::json!({}))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM platform_resources")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT action FROM platform_audit WHERE actor = 'ops' ORDER BY at")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(
        audited,
        vec!["provider_health.write", "provider_health.read"]
    );
    tx.commit().await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn tenant_transactions_require_context() {
    let t = TestDb::new().await;
    let db = t.db();
    let e = db.tenant().await.unwrap_err();
    assert_eq!(e.code.as_str(), "E-TENANT-001");
    let cp = t.control(Coord::none());
    assert_code(cp.active(ContractKind::Agent, "x").await, "E-TENANT-001");
    assert_code(cp.migration().await, "E-TENANT-001");
    t.cleanup().await;
}
