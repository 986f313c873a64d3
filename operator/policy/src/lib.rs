//! Administrator-managed platform policy for what tenants may make the platform do on their
//! behalf (issue 11 part A): the stdio catalog ([`catalog`]), the egress allow-list
//! ([`egress`]) and one uid per tenant for stdio children ([`PolicySource::tenant_uid`]).
//! (Master secrets kept out of the environment of processes that start children live in the
//! `awooop` binary crate, `master_secrets`.)
//!
//! The tables are platform tables (`awooop:platform`, forced RLS, platform scope only), so
//! every read and write goes through [`Db::platform`], which writes a `platform_audit` row
//! first. Readers on the hot path ([`PolicySource`]) cache one snapshot of the catalog and the
//! egress rules for [`POLICY_CACHE`]: an administrator's change applies within that time, and
//! a changed snapshot gives upstream connections a new fingerprint (the old connection or
//! child is closed).

pub mod catalog;
pub mod egress;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;

use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::{Db, ProjectId};
use catalog::CatalogEntry;
use egress::{EgressPolicy, EgressRule, HostPattern};

/// Whether this process runs as root (stdio children can then get their tenant's uid).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// How long a policy snapshot is reused before it is read again.
pub const POLICY_CACHE: Duration = Duration::from_secs(2);

/// The catalog and egress rules in force, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    pub catalog: HashMap<String, CatalogEntry>,
    pub egress: Arc<EgressPolicy>,
    /// SHA-256 over the whole snapshot: part of upstream connection fingerprints.
    pub digest: [u8; 32],
    /// Project → URLs that passed [`PolicySnapshot::check_egress`] under this snapshot.
    passed: Mutex<HashMap<String, HashSet<String>>>,
}

impl PolicySnapshot {
    pub fn new(entries: Vec<CatalogEntry>, rules: &[EgressRule], loopback: bool) -> Self {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(&[u8::from(loopback)]);
        for e in &entries {
            field(serde_json::to_string(e).expect("entry json").as_bytes());
        }
        for r in rules {
            field(r.project.as_deref().unwrap_or("*").as_bytes());
            field(r.host.as_bytes());
        }
        let digest = h.finalize().into();
        let mut policy = EgressPolicy::compile(rules);
        if loopback {
            policy = policy.allow_loopback();
        }
        Self {
            catalog: entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
            egress: Arc::new(policy),
            digest,
            passed: Mutex::default(),
        }
    }

    /// [`EgressPolicy::check`] of `url` for `project`, without the parsed destination. A pass
    /// is remembered for the life of this snapshot: the snapshot is immutable, so the answer
    /// cannot change, and the gateway asks it for every tool call (the URL parse and host
    /// normalisation were a few per cent of a call's CPU). Refusals are not remembered: they
    /// are rare, and a caller cannot grow the memory with URLs that fail. Passes are bounded
    /// by the URLs of configured providers; the map is cleared if it ever grows large.
    pub fn check_egress(&self, project: &str, url: &str) -> Result<(), egress::EgressError> {
        if self
            .passed
            .lock()
            .expect("egress memo")
            .get(project)
            .is_some_and(|urls| urls.contains(url))
        {
            return Ok(());
        }
        self.egress.check(project, url)?;
        let mut passed = self.passed.lock().expect("egress memo");
        if passed.values().map(HashSet::len).sum::<usize>() >= 4096 {
            passed.clear();
        }
        passed
            .entry(project.to_string())
            .or_default()
            .insert(url.to_string());
        Ok(())
    }
}

#[derive(Clone)]
enum Backing {
    Db(Db),
    Fixed(Vec<CatalogEntry>, Vec<EgressRule>),
}

struct SourceInner {
    backing: Backing,
    fixed: Option<Arc<PolicySnapshot>>,
    loopback: bool,
    cache: Mutex<Option<(Instant, Arc<PolicySnapshot>)>>,
    uids: Mutex<HashMap<String, u32>>,
}

/// Where the gateway and the model path read the platform policy from. Cloning is cheap.
#[derive(Clone)]
pub struct PolicySource {
    inner: Arc<SourceInner>,
}

impl std::fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySource")
            .field("loopback", &self.inner.loopback)
            .finish()
    }
}

impl PolicySource {
    fn build(backing: Backing, loopback: bool) -> Self {
        let fixed = match &backing {
            Backing::Fixed(e, r) => Some(Arc::new(PolicySnapshot::new(e.clone(), r, loopback))),
            Backing::Db(_) => None,
        };
        Self {
            inner: Arc::new(SourceInner {
                backing,
                fixed,
                loopback,
                cache: Mutex::new(None),
                uids: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The administrator's catalog and rules from the database (the production source).
    pub fn from_db(db: Db) -> Self {
        Self::build(Backing::Db(db), false)
    }

    /// A fixed policy without a database (tests of the upstream client, benchmarks).
    pub fn fixed(entries: Vec<CatalogEntry>, rules: &[EgressRule], loopback: bool) -> Self {
        Self::build(Backing::Fixed(entries, rules.to_vec()), loopback)
    }

    /// Nothing allowed: no catalog entry, no destination. The default of an unconfigured pool.
    pub fn deny_all() -> Self {
        Self::fixed(Vec::new(), &[], false)
    }

    /// The same source plus loopback (127.0.0.0/8, ::1, `localhost`) for every project, not
    /// stored anywhere: `awooop up`'s local mode, which says so in its log.
    pub fn allow_loopback(self) -> Self {
        Self::build(self.inner.backing.clone(), true)
    }

    /// Forget the cached snapshot (the next read goes to the database).
    pub fn invalidate(&self) {
        *self.inner.cache.lock().expect("policy cache") = None;
    }

    /// The snapshot in force (cached for [`POLICY_CACHE`]).
    pub async fn snapshot(&self) -> Result<Arc<PolicySnapshot>> {
        let db = match (&self.inner.backing, &self.inner.fixed) {
            (Backing::Db(db), _) => db,
            (Backing::Fixed(..), Some(s)) => return Ok(s.clone()),
            (Backing::Fixed(..), None) => unreachable!("fixed sources are built with a snapshot"),
        };
        if let Some((at, s)) = self.inner.cache.lock().expect("policy cache").as_ref()
            && at.elapsed() < POLICY_CACHE
        {
            return Ok(s.clone());
        }
        // Boxed: every gateway call reads the snapshot, a reload happens once per
        // POLICY_CACHE; inline, the reload's transaction would make every caller's future
        // tens of kilobytes, allocated and copied per call.
        Box::pin(self.reload(db)).await
    }

    async fn reload(&self, db: &Db) -> Result<Arc<PolicySnapshot>> {
        let mut tx = db
            .platform("platform", "platform.policy.read", json!({}))
            .await?;
        let entries = catalog_rows(&mut tx).await?;
        let rules = egress_rows(&mut tx).await?;
        tx.commit().await?;
        let snap = Arc::new(PolicySnapshot::new(entries, &rules, self.inner.loopback));
        *self.inner.cache.lock().expect("policy cache") = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// The uid offset of `project`'s stdio children: allocated once, never reused, so no two
    /// tenants' children share a uid.
    pub async fn tenant_uid_offset(&self, project: &ProjectId) -> Result<u32> {
        if let Some(u) = self.inner.uids.lock().expect("uids").get(project.as_str()) {
            return Ok(*u);
        }
        let offset = match &self.inner.backing {
            Backing::Fixed(..) => {
                let mut m = self.inner.uids.lock().expect("uids");
                let next = m.len() as u32 + 1;
                *m.entry(project.as_str().to_string()).or_insert(next)
            }
            Backing::Db(db) => {
                let mut tx = db
                    .platform(
                        "platform",
                        "platform.tenant_uid.allocate",
                        json!({"project": project.as_str()}),
                    )
                    .await?;
                sqlx::query(
                    "INSERT INTO platform_tenant_uids (project) VALUES ($1) ON CONFLICT (project) DO NOTHING",
                )
                .bind(project.as_str())
                .execute(&mut *tx)
                .await?;
                let off: i64 = sqlx::query_scalar(
                    "SELECT uid_offset FROM platform_tenant_uids WHERE project = $1",
                )
                .bind(project.as_str())
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                u32::try_from(off).map_err(|_| {
                    Error::new(ErrorCode::Internal, "tenant uid offset out of range")
                })?
            }
        };
        self.inner
            .uids
            .lock()
            .expect("uids")
            .insert(project.as_str().to_string(), offset);
        Ok(offset)
    }
}

async fn catalog_rows(tx: &mut sqlx::PgConnection) -> Result<Vec<CatalogEntry>> {
    let rows = sqlx::query(
        "SELECT name, command, args, env_allow, description FROM platform_stdio_catalog ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(CatalogEntry {
                name: r.get("name"),
                command: r.get("command"),
                args: serde_json::from_value(r.get("args")).map_err(Error::internal)?,
                env_allow: r.get("env_allow"),
                description: r.get("description"),
            })
        })
        .collect()
}

async fn egress_rows(tx: &mut sqlx::PgConnection) -> Result<Vec<EgressRule>> {
    let rows = sqlx::query(
        "SELECT rule_id, project, host, note FROM platform_egress_rules ORDER BY project NULLS FIRST, host",
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EgressRule {
            rule_id: r.get("rule_id"),
            project: r.get("project"),
            host: r.get("host"),
            note: r.get("note"),
        })
        .collect())
}

// --- administrator operations (CLI `awooop catalog`, `awooop egress`) ---------------------

/// Add or replace a catalog entry.
pub async fn catalog_put(db: &Db, actor: &str, e: &CatalogEntry) -> Result<CatalogEntry> {
    e.validate()?;
    let mut tx = db
        .platform(
            actor,
            "catalog.put",
            json!({"name": e.name, "command": e.command}),
        )
        .await?;
    sqlx::query(
        "INSERT INTO platform_stdio_catalog (name, command, args, env_allow, description, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (name) DO UPDATE SET command = EXCLUDED.command, args = EXCLUDED.args, \
         env_allow = EXCLUDED.env_allow, description = EXCLUDED.description, \
         updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(&e.name)
    .bind(&e.command)
    .bind(json!(e.args))
    .bind(&e.env_allow)
    .bind(&e.description)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(e.clone())
}

pub async fn catalog_list(db: &Db, actor: &str) -> Result<Vec<CatalogEntry>> {
    let mut tx = db.platform(actor, "catalog.list", json!({})).await?;
    let v = catalog_rows(&mut tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Remove an entry; running children of it end at their idle timeout or next rotation, and no
/// new one starts. Returns whether it existed.
pub async fn catalog_remove(db: &Db, actor: &str, name: &str) -> Result<bool> {
    let mut tx = db
        .platform(actor, "catalog.remove", json!({"name": name}))
        .await?;
    let n = sqlx::query("DELETE FROM platform_stdio_catalog WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n > 0)
}

/// Check a contract's stdio references at publish (`E-CATALOG-001`).
pub async fn catalog_check_contract(
    db: &Db,
    actor: &str,
    c: &awooop_contracts::McpGatewayContract,
) -> Result<()> {
    let refs = catalog::stdio_references(c);
    if refs.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = refs.iter().map(|(n, _)| n.clone()).collect();
    let mut tx = db
        .platform(actor, "catalog.check", json!({"entries": names}))
        .await?;
    let entries = catalog_rows(&mut tx).await?;
    tx.commit().await?;
    catalog::check_references(c, |n| entries.iter().find(|e| e.name == n).cloned())
}

/// Allow `host` (name, `*.suffix` or CIDR) for `project` (None: every project).
pub async fn egress_allow(
    db: &Db,
    actor: &str,
    project: Option<&str>,
    host: &str,
    note: &str,
) -> Result<EgressRule> {
    let pattern =
        HostPattern::parse(host).map_err(|m| Error::new(ErrorCode::EgressRuleInvalid, m))?;
    if let Some(p) = project {
        ProjectId::parse(p)?;
    }
    if note.len() > 1000 || note.contains('\0') {
        return Err(Error::new(
            ErrorCode::EgressRuleInvalid,
            "the note is at most 1000 characters",
        ));
    }
    let rule = EgressRule {
        rule_id: uuid::Uuid::now_v7(),
        project: project.map(str::to_string),
        host: pattern.to_string(),
        note: note.to_string(),
    };
    let mut tx = db
        .platform(
            actor,
            "egress.allow",
            json!({"project": rule.project, "host": rule.host}),
        )
        .await?;
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO platform_egress_rules (rule_id, project, host, note, created_by) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (project, host) DO UPDATE SET note = EXCLUDED.note RETURNING rule_id",
    )
    .bind(rule.rule_id)
    .bind(&rule.project)
    .bind(&rule.host)
    .bind(&rule.note)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(EgressRule {
        rule_id: id,
        ..rule
    })
}

pub async fn egress_list(db: &Db, actor: &str) -> Result<Vec<EgressRule>> {
    let mut tx = db.platform(actor, "egress.list", json!({})).await?;
    let v = egress_rows(&mut tx).await?;
    tx.commit().await?;
    Ok(v)
}

pub async fn egress_remove(db: &Db, actor: &str, rule_id: uuid::Uuid) -> Result<bool> {
    let mut tx = db
        .platform(actor, "egress.remove", json!({"rule_id": rule_id}))
        .await?;
    let n = sqlx::query("DELETE FROM platform_egress_rules WHERE rule_id = $1")
        .bind(rule_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress::tests::rule;

    /// The remembered check answers as the policy does, pass or refusal, per project, however
    /// often it is asked and in whatever order; and it lives only as long as its snapshot.
    #[test]
    fn remembered_egress_checks_answer_like_the_policy() {
        let rules = [
            rule(Some("alpha"), "api.example.com"),
            rule(None, "shared.example.org"),
        ];
        let snap = PolicySnapshot::new(vec![], &rules, false);
        let cases = [
            ("alpha", "https://api.example.com/mcp", true),
            // The same URL another project may not reach: a memo keyed by URL alone would let
            // it through after alpha's pass.
            ("beta", "https://api.example.com/mcp", false),
            ("beta", "https://shared.example.org/x", true),
            ("alpha", "https://evil.example.net/", false),
            ("alpha", "http://127.0.0.1:9/mcp", false),
            ("alpha", "https://user@api.example.com/mcp", false),
        ];
        for round in 0..3 {
            for (project, url, allowed) in cases {
                assert_eq!(
                    snap.check_egress(project, url).is_ok(),
                    allowed,
                    "round {round}: {project} {url}"
                );
                assert_eq!(
                    snap.egress.check(project, url).is_ok(),
                    allowed,
                    "{project} {url}"
                );
            }
        }
        // The next snapshot, without alpha's rule, refuses what this one let through.
        let next = PolicySnapshot::new(vec![], &rules[1..], false);
        assert!(
            next.check_egress("alpha", "https://api.example.com/mcp")
                .is_err()
        );
        assert!(
            snap.check_egress("alpha", "https://api.example.com/mcp")
                .is_ok()
        );
    }
}
