//! Caller identity: per-project API keys and the platform admin token.
//!
//! An API key is `awk.{project}.{key_id}.{secret}`: the project and key id locate the stored row
//! (inside that project's RLS scope), the 256-bit secret is compared as a SHA-256 in constant
//! time. The project of a request always comes from the credential; an admin (platform)
//! credential may name the project it acts on.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::tenancy::{self, Db, ProjectId};
use awooop_core::error::{Error, ErrorCode, Result};

/// Roles an API key can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Read contracts, runs and audit.
    Reader,
    /// Create and edit drafts.
    Author,
    /// Publish (sign) revisions.
    Publisher,
    /// Approve activations.
    Approver,
    /// Activate approved revisions, change migration mode.
    Activator,
    /// Start and cancel runs, call tools.
    Runner,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Reader,
        Role::Author,
        Role::Publisher,
        Role::Approver,
        Role::Activator,
        Role::Runner,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Result<Role> {
        s.parse().map_err(|_| {
            Error::new(
                ErrorCode::ReqInvalidParam,
                "role must be one of reader, author, publisher, approver, activator, runner",
            )
        })
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    pub roles: Vec<Role>,
    /// Platform administrator (admin token or local CLI with database access).
    pub admin: bool,
}

impl Actor {
    /// The local operator using the CLI with database credentials: an administrator.
    pub fn cli(principal: &str) -> Self {
        Self {
            principal: principal.to_string(),
            roles: Role::ALL.to_vec(),
            admin: true,
        }
    }

    pub fn require(&self, role: Role) -> Result<()> {
        if self.admin || self.roles.contains(&role) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::AuthForbidden,
                format!("this action needs the '{}' role", role.as_str()),
            ))
        }
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.admin {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::AuthForbidden,
                "this action needs the platform admin credential",
            ))
        }
    }
}

/// A parsed (not yet verified) API key.
pub struct ApiKeyParts<'a> {
    pub project: ProjectId,
    pub key_id: &'a str,
    pub secret: &'a str,
}

pub fn parse_api_key(token: &str) -> Result<ApiKeyParts<'_>> {
    let invalid = || Error::new(ErrorCode::AuthInvalid, "invalid credential");
    let mut it = token.splitn(4, '.');
    let (Some("awk"), Some(project), Some(key_id), Some(secret)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(invalid());
    };
    let project = ProjectId::parse(project).map_err(|_| invalid())?;
    let key_id_ok = key_id.len() == 16
        && key_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    if !key_id_ok || !secret_ok {
        return Err(invalid());
    }
    Ok(ApiKeyParts {
        project,
        key_id,
        secret,
    })
}

/// A freshly minted API key: the full token (shown once) and what is stored.
pub struct MintedKey {
    pub token: String,
    pub key_id: String,
    pub secret_hash: Vec<u8>,
}

pub fn mint_api_key(project: &ProjectId) -> MintedKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let key_id = hex::encode(id);
    let secret = hex::encode(secret);
    MintedKey {
        token: format!("awk.{}.{key_id}.{secret}", project.as_str()),
        secret_hash: Sha256::digest(secret.as_bytes()).to_vec(),
        key_id,
    }
}

/// The agents and environments a runner key may act for. `*` in a list means any; the admin
/// writes it deliberately when minting. The `/mcp` headers and a run's `agent` may only pick
/// from these lists, never widen them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBinding {
    pub agents: Vec<String>,
    pub environments: Vec<String>,
}

impl KeyBinding {
    fn has(list: &[String], v: &str) -> bool {
        list.iter().any(|x| x == "*" || x == v)
    }

    pub fn allows_agent(&self, agent: &str) -> bool {
        Self::has(&self.agents, agent)
    }

    pub fn allows(&self, agent: &str, environment: &str) -> bool {
        self.allows_agent(agent) && Self::has(&self.environments, environment)
    }

    /// Both lists non-empty (at most 256 entries), each entry a slug or `*`.
    pub fn validate(&self) -> Result<()> {
        let slug = |s: &str| {
            s == "*"
                || (!s.is_empty()
                    && s.len() <= 63
                    && s.as_bytes()[0].is_ascii_lowercase()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        };
        for (what, list) in [
            ("agents", &self.agents),
            ("environments", &self.environments),
        ] {
            if list.is_empty() || list.len() > 256 || !list.iter().all(|x| slug(x)) {
                return Err(Error::new(
                    ErrorCode::ReqInvalidParam,
                    format!(
                        "a runner key needs {what}: 1..=256 names matching ^[a-z][a-z0-9-]{{0,62}}$ or \"*\""
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Verify an API key against the database; returns the actor and its project.
pub async fn verify_api_key(db: &Db, token: &str) -> Result<(ProjectId, Actor)> {
    verify_api_key_bound(db, token)
        .await
        .map(|(project, actor, _)| (project, actor))
}

/// [`verify_api_key`] plus the key's [`KeyBinding`] when it has the runner role (an empty
/// binding, which allows nothing, for runner keys minted before bindings existed).
pub async fn verify_api_key_bound(
    db: &Db,
    token: &str,
) -> Result<(ProjectId, Actor, Option<KeyBinding>)> {
    let parts = parse_api_key(token)?;
    let project = parts.project.clone();
    type Row = (
        Vec<u8>,
        String,
        Vec<String>,
        Option<Vec<String>>,
        Option<Vec<String>>,
    );
    let row: Option<Row> = tenancy::scope(project.clone(), async {
        let mut tx = db.tenant().await?;
        let row = sqlx::query_as(
            "SELECT k.secret_hash, k.principal, k.roles, k.agents, k.environments FROM api_keys k \
             JOIN projects p USING (project_id) \
             WHERE k.key_id = $1 AND k.revoked_at IS NULL AND p.status = 'active'",
        )
        .bind(parts.key_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, Error>(row)
    })
    .await?;
    let presented = Sha256::digest(parts.secret.as_bytes());
    // Compare even when the row is missing, against a dummy, to keep timing uniform.
    let (stored, principal, roles, agents, environments) =
        row.unwrap_or_else(|| (vec![0u8; 32], String::new(), vec![], None, None));
    let equal: bool = presented.as_slice().ct_eq(stored.as_slice()).into();
    if !equal || principal.is_empty() {
        return Err(Error::new(ErrorCode::AuthInvalid, "invalid credential"));
    }
    let roles = roles
        .iter()
        .filter_map(|r| Role::parse(r).ok())
        .collect::<Vec<_>>();
    let binding = roles.contains(&Role::Runner).then(|| KeyBinding {
        agents: agents.unwrap_or_default(),
        environments: environments.unwrap_or_default(),
    });
    Ok((
        project,
        Actor {
            principal,
            roles,
            admin: false,
        },
        binding,
    ))
}

/// The platform admin token, held as a SHA-256 so the plain value is not kept in memory longer
/// than start-up.
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let h = Sha256::digest(presented.as_bytes());
        h.as_slice().ct_eq(&self.hash).into()
    }

    pub fn generate() -> String {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        format!("awa.{}", hex::encode(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_format() {
        let p = ProjectId::parse("awoooi").unwrap();
        let k = mint_api_key(&p);
        let parts = parse_api_key(&k.token).unwrap();
        assert_eq!(parts.project, p);
        assert_eq!(parts.key_id, k.key_id);
        assert_eq!(
            Sha256::digest(parts.secret.as_bytes()).to_vec(),
            k.secret_hash
        );
        for bad in [
            "",
            "awk",
            "awk.awoooi",
            "xyz.awoooi.0123456789abcdef.00",
            "awk.AW.0123456789abcdef.0000000000000000000000000000000000000000000000000000000000000000",
            "awk.awoooi.short.0000000000000000000000000000000000000000000000000000000000000000",
            "awk.awoooi.0123456789abcdef.zz",
        ] {
            assert!(parse_api_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bindings_only_narrow() {
        let b = KeyBinding {
            agents: vec!["triage".into()],
            environments: vec!["dev".into(), "staging".into()],
        };
        assert!(b.validate().is_ok());
        assert!(b.allows("triage", "dev"));
        assert!(!b.allows("triage", "prod"));
        assert!(!b.allows("reporter", "dev"));
        assert!(
            !KeyBinding::default().allows("triage", "dev"),
            "empty allows nothing"
        );
        let any = KeyBinding {
            agents: vec!["*".into()],
            environments: vec!["*".into()],
        };
        assert!(any.validate().is_ok() && any.allows("x", "y"));
        for bad in [
            KeyBinding::default(),
            KeyBinding {
                agents: vec!["Bad Agent".into()],
                environments: vec!["dev".into()],
            },
            KeyBinding {
                agents: vec!["a".into()],
                environments: vec![],
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_token() {
        let t = AdminToken::generate();
        let a = AdminToken::new(&t);
        assert!(a.matches(&t));
        assert!(!a.matches("awa.nope"));
        assert!(!format!("{a:?}").contains(&t));
    }
}
